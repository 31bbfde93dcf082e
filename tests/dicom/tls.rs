//! DICOM TLS with dcmtk: echoscu/storescu +tls against the `[dicom.tls]` listener, with and
//! without mutual TLS; plain DICOM on the TLS port is refused.

use crate::harness::*;
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
    let out = echoscu(tls_port).tls_anonymous(&ca).run();
    assert!(
        out.status.success(),
        "echoscu +tls:\n{}\n{}",
        text(&out),
        d.log()
    );
    let out = storescu(tls_port)
        .tls_anonymous(&ca)
        .required_only()
        .file(&ct)
        .run();
    assert!(
        out.status.success(),
        "storescu +tls:\n{}\n{}",
        text(&out),
        d.log()
    );
    assert_eq!(d.instance_count(), 1);
    // Plain DICOM on the TLS port is refused.
    let out = echoscu(tls_port).opts(&["-to", "5", "-ta", "5"]).run();
    assert!(
        !out.status.success(),
        "plain echoscu must fail on the TLS port:\n{}",
        text(&out)
    );
    assert!(d.echo(), "the plain port still serves");
    drop(d);

    // Mutual TLS: the client certificate is required.
    let (d, tls_port) = tls_daemon(p, true);
    let out = echoscu(tls_port).tls(&ck, &cc, &ca).run();
    assert!(
        out.status.success(),
        "echoscu with a client certificate:\n{}\n{}",
        text(&out),
        d.log()
    );
    let out = storescu(tls_port)
        .tls(&ck, &cc, &ca)
        .required_only()
        .file(&ct)
        .run();
    assert!(
        out.status.success(),
        "storescu with a client certificate:\n{}\n{}",
        text(&out),
        d.log()
    );
    let out = echoscu(tls_port).tls_anonymous(&ca).run();
    assert!(
        !out.status.success(),
        "a client without certificate must be refused under mutual TLS:\n{}",
        text(&out)
    );
    let out = echoscu(tls_port).opts(&["-to", "5", "-ta", "5"]).run();
    assert!(
        !out.status.success(),
        "plain echoscu must fail on the TLS port:\n{}",
        text(&out)
    );
    assert!(d.echo());
}

/// Review L3: a peer whose entry names a `tls_identity` is admitted only over TLS, with a
/// client certificate valid for that name; another certificate from the same CA claiming its
/// AE title is aborted before anything is read, and the plain listener refuses the AE title.
/// Peers without an identity are admitted as before. With `dicom.listen = ""` there is no
/// plain listener at all.
#[test]
fn a_peer_with_a_tls_identity_must_present_its_certificate() {
    let pki = tempfile::tempdir().unwrap();
    let p = pki.path();
    make_pki(p);
    // Another client certificate from the same CA, for another name.
    make_cert(p, "impostor", "DNS:impostor.example");
    let f = |n: &str| p.join(n).display().to_string();
    let tls_port = free_port();
    let extra = format!(
        "[dicom.tls]\nlisten = \"127.0.0.1:{tls_port}\"\ncertificate = \"{}\"\nprivate_key = \"{}\"\nclient_ca = \"{}\"\n[[dicom.peers]]\nae_title = \"SECUREPACS\"\nhost = \"127.0.0.1\"\nport = 40100\ntls_identity = \"localhost\"\n",
        f("server.crt"),
        f("server.key"),
        f("ca.crt"),
    );
    let mut d = Daemon::start(Opts {
        extra,
        read_timeout_s: 5,
        ..Opts::default()
    });
    d.wait_listening(&format!("127.0.0.1:{tls_port}"));
    let ct = pydicom_files().join("CT_small.dcm").display().to_string();
    let tls_call = |cert: &str, aet: &str, file: Option<&str>| {
        let (key, crt) = (f(&format!("{cert}.key")), f(&format!("{cert}.crt")));
        let ca = f("ca.crt");
        match file {
            Some(file) => storescu(tls_port)
                .required_only()
                .tls(&key, &crt, &ca)
                .calling(aet)
                .file(file)
                .run(),
            None => echoscu(tls_port).tls(&key, &crt, &ca).calling(aet).run(),
        }
    };
    // The right certificate for SECUREPACS: echo and store.
    let out = tls_call("client", "SECUREPACS", None);
    assert!(out.status.success(), "{}\n{}", text(&out), d.log());
    let out = tls_call("client", "SECUREPACS", Some(&ct));
    assert!(out.status.success(), "{}\n{}", text(&out), d.log());
    assert_eq!(d.instance_count(), 1);
    // Another certificate of the same CA claiming SECUREPACS: aborted, nothing stored.
    let mr = pydicom_files().join("MR_small.dcm").display().to_string();
    for file in [None, Some(mr.as_str())] {
        let out = tls_call("impostor", "SECUREPACS", file);
        // echoscu may exit 0 although its echo failed on the abort: judge by what it says.
        assert!(
            !out.status.success() || text(&out).contains("Peer aborted Association"),
            "an impostor certificate got through:\n{}",
            text(&out)
        );
    }
    assert_eq!(d.instance_count(), 1, "the impostor stored nothing");
    assert!(
        d.log()
            .contains("aborted: the client certificate is not the calling AE's tls_identity"),
        "{}",
        d.log()
    );
    // SECUREPACS on the plain listener: rejected (it has to prove its certificate).
    let out = echoscu(d.port).calling("SECUREPACS").run();
    assert!(!out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("Calling AE Title Not Recognized"),
        "{}",
        text(&out)
    );
    // A peer without an identity is admitted as before, plain or TLS.
    assert!(d.echo());
    let out = tls_call("impostor", "ECHOSCU", None);
    assert!(out.status.success(), "{}\n{}", text(&out), d.log());

    // DICOM TLS only: no plain listener.
    assert!(d.terminate(), "clean stop:\n{}", d.log());
    let cfg = std::fs::read_to_string(&d.config).unwrap().replace(
        &format!("listen = \"127.0.0.1:{}\"", d.port),
        "listen = \"\"",
    );
    std::fs::write(&d.config, cfg).unwrap();
    d.spawn_process();
    d.wait_listening(&format!("127.0.0.1:{tls_port}"));
    assert!(
        std::net::TcpStream::connect(("127.0.0.1", d.port)).is_err(),
        "the plain listener is still up"
    );
    let out = tls_call("client", "SECUREPACS", None);
    assert!(out.status.success(), "{}\n{}", text(&out), d.log());
}
