//! DICOM TLS with dcmtk: echoscu/storescu +tls against the `[dicom.tls]` listener, with and
//! without mutual TLS; plain DICOM on the TLS port is refused.

mod common;
use common::*;
use std::path::Path;

fn tls_daemon(pki: &Path, mutual: bool) -> (Daemon, u16) {
    let tls_port = free_port();
    let ca = if mutual {
        format!("client_ca = \"{}\"\n", pki.join("ca.crt").display())
    } else {
        String::new()
    };
    let extra = format!(
        "[dicom.tls]\nlisten = \"127.0.0.1:{tls_port}\"\ncertificate = \"{}\"\nprivate_key = \"{}\"\n{ca}",
        pki.join("server.crt").display(),
        pki.join("server.key").display()
    );
    let mut d = Daemon::start(Opts {
        extra,
        read_timeout_s: 5,
        ..Opts::default()
    });
    d.wait_listening(&format!("127.0.0.1:{tls_port}"));
    (d, tls_port)
}

#[test]
fn dicom_tls_and_mutual_tls_with_dcmtk() {
    let pki = tempfile::tempdir().unwrap();
    let p = pki.path();
    make_pki(p);
    let ca = p.join("ca.crt").display().to_string();
    let ck = p.join("client.key").display().to_string();
    let cc = p.join("client.crt").display().to_string();
    let ct = pydicom_files().join("CT_small.dcm").display().to_string();

    // Server-authenticated TLS: an anonymous client that trusts our CA gets through.
    let (d, tls_port) = tls_daemon(p, false);
    let tp = tls_port.to_string();
    let out = run(
        "echoscu",
        &[
            "+tla",
            "+cf",
            &ca,
            "-aet",
            "ECHOSCU",
            "-aec",
            "PROXYSEG",
            "127.0.0.1",
            &tp,
        ],
    );
    assert!(
        out.status.success(),
        "echoscu +tls:\n{}\n{}",
        text(&out),
        d.log()
    );
    let out = run(
        "storescu",
        &[
            "+tla",
            "+cf",
            &ca,
            "-R",
            "-aet",
            "STORESCU",
            "-aec",
            "PROXYSEG",
            "127.0.0.1",
            &tp,
            &ct,
        ],
    );
    assert!(
        out.status.success(),
        "storescu +tls:\n{}\n{}",
        text(&out),
        d.log()
    );
    assert_eq!(d.instance_count(), 1);
    // Plain DICOM on the TLS port is refused.
    let out = run(
        "echoscu",
        &[
            "-to",
            "5",
            "-ta",
            "5",
            "-aet",
            "ECHOSCU",
            "-aec",
            "PROXYSEG",
            "127.0.0.1",
            &tp,
        ],
    );
    assert!(
        !out.status.success(),
        "plain echoscu must fail on the TLS port:\n{}",
        text(&out)
    );
    assert!(d.echo(), "the plain port still serves");
    drop(d);

    // Mutual TLS: the client certificate is required.
    let (d, tls_port) = tls_daemon(p, true);
    let tp = tls_port.to_string();
    let out = run(
        "echoscu",
        &[
            "+tls",
            &ck,
            &cc,
            "+cf",
            &ca,
            "-aet",
            "ECHOSCU",
            "-aec",
            "PROXYSEG",
            "127.0.0.1",
            &tp,
        ],
    );
    assert!(
        out.status.success(),
        "echoscu with a client certificate:\n{}\n{}",
        text(&out),
        d.log()
    );
    let out = run(
        "storescu",
        &[
            "+tls",
            &ck,
            &cc,
            "+cf",
            &ca,
            "-R",
            "-aet",
            "STORESCU",
            "-aec",
            "PROXYSEG",
            "127.0.0.1",
            &tp,
            &ct,
        ],
    );
    assert!(
        out.status.success(),
        "storescu with a client certificate:\n{}\n{}",
        text(&out),
        d.log()
    );
    let out = run(
        "echoscu",
        &[
            "+tla",
            "+cf",
            &ca,
            "-aet",
            "ECHOSCU",
            "-aec",
            "PROXYSEG",
            "127.0.0.1",
            &tp,
        ],
    );
    assert!(
        !out.status.success(),
        "a client without certificate must be refused under mutual TLS:\n{}",
        text(&out)
    );
    let out = run(
        "echoscu",
        &[
            "-to",
            "5",
            "-ta",
            "5",
            "-aet",
            "ECHOSCU",
            "-aec",
            "PROXYSEG",
            "127.0.0.1",
            &tp,
        ],
    );
    assert!(
        !out.status.success(),
        "plain echoscu must fail on the TLS port:\n{}",
        text(&out)
    );
    assert!(d.echo());
}
