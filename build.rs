//! Compiles proto/proxyseg/admin/v1/admin.proto with protox (pure Rust, no protoc) into tonic
//! services and writes the encoded file descriptor set to OUT_DIR for gRPC reflection.

use prost::Message;
use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let proto = "proto/proxyseg/admin/v1/admin.proto";
    println!("cargo:rerun-if-changed={proto}");
    let fds = protox::Compiler::new(["proto"])?
        .include_imports(true)
        .include_source_info(true)
        .open_file(proto)?
        .file_descriptor_set();
    let out = PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(out.join("admin_descriptor.bin"), fds.encode_to_vec())?;
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        .compile_fds(fds)?;
    Ok(())
}
