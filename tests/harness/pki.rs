//! A test PKI made with openssl: a CA and certificates it signs.

use super::{require_tool, text};
use std::path::Path;
use std::process::Command;

pub fn openssl(dir: &Path, args: &[&str]) {
    require_tool("openssl");
    let o = Command::new("openssl")
        .current_dir(dir)
        .args(args)
        .output()
        .unwrap();
    assert!(o.status.success(), "openssl {args:?}:\n{}", text(&o));
}

/// A CA, a server certificate for 127.0.0.1 and a client certificate, all signed by the CA.
pub fn make_pki(dir: &Path) {
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "ca.key",
            "-out",
            "ca.crt",
            "-days",
            "2",
            "-subj",
            "/CN=proxyseg test CA",
        ],
    );
    for name in ["server", "client"] {
        make_cert(dir, name, "IP:127.0.0.1,DNS:localhost");
    }
}

/// `<name>.key` and `<name>.crt` in `dir`, signed by the CA of [`make_pki`], with
/// `subjectAltName` `san` (e.g. `DNS:pacs.example`).
pub fn make_cert(dir: &Path, name: &str, san: &str) {
    let ext = format!("{name}.ext");
    std::fs::write(dir.join(&ext), format!("subjectAltName={san}\n")).unwrap();
    openssl(
        dir,
        &[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            &format!("{name}.key"),
            "-out",
            &format!("{name}.csr"),
            "-subj",
            &format!("/CN={name}"),
        ],
    );
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            &format!("{name}.csr"),
            "-CA",
            "ca.crt",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            &format!("{name}.crt"),
            "-days",
            "2",
            "-extfile",
            &ext,
        ],
    );
}
