//! The admin API over TLS and mutual TLS (tonic with rustls), driven by the real CLI binary:
//! a client that trusts the CA gets through, a client without a certificate is refused when
//! the server requires one, and plain HTTP/2 to the TLS port fails.

use crate::harness::admin::*;
use crate::harness::*;
use std::path::Path;
use std::process::{Command, Output};

fn tls_admin(pki: &Path, mutual: bool) -> Admin {
    let ca = if mutual {
        format!("client_ca = \"{}\"\n", pki.join("ca.crt").display())
    } else {
        String::new()
    };
    start_with(&format!(
        "[admin.tls]\ncertificate = \"{}\"\nprivate_key = \"{}\"\n{ca}",
        pki.join("server.crt").display(),
        pki.join("server.key").display()
    ))
}

fn cli(a: &Admin, scheme: &str, tls_args: &[String]) -> Output {
    let tf = a.aux.path().join("token");
    std::fs::write(&tf, ADMIN_TOKEN).unwrap();
    Command::new(env!("CARGO_BIN_EXE_proxyseg"))
        .args([
            "admin",
            "--endpoint",
            &format!("{scheme}://{}", a.addr),
            "--token-file",
        ])
        .arg(&tf)
        .args(tls_args)
        .args(["support-set", "list"])
        .output()
        .unwrap()
}

#[test]
fn admin_tls_and_mutual_tls() {
    let pki = tempfile::tempdir().unwrap();
    let p = pki.path();
    make_pki(p);
    let f = |n: &str| p.join(n).display().to_string();
    let ca = vec!["--ca".to_string(), f("ca.crt")];
    let mut with_cert = ca.clone();
    with_cert.extend([
        "--cert".into(),
        f("client.crt"),
        "--key".into(),
        f("client.key"),
    ]);

    let a = tls_admin(p, false);
    let o = cli(&a, "https", &ca);
    assert!(o.status.success(), "TLS: {}", text(&o));
    assert!(String::from_utf8_lossy(&o.stdout).starts_with("NAME"));
    let o = cli(&a, "http", &[]);
    assert!(
        !o.status.success(),
        "plain HTTP/2 on the TLS port: {}",
        text(&o)
    );
    drop(a);

    let a = tls_admin(p, true);
    let o = cli(&a, "https", &with_cert);
    assert!(o.status.success(), "mutual TLS: {}", text(&o));
    let o = cli(&a, "https", &ca);
    assert!(!o.status.success(), "no client certificate: {}", text(&o));
}
