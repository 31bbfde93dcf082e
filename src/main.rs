//! The `proxyseg` command line.
fn main() {
    println!("proxyseg skeleton");
}
