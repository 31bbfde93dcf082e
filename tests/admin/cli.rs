//! `proxyseg config check`: every problem printed with its key, exit 1 on error.

use crate::harness::root;
use std::process::Command;

fn check(toml: &str) -> std::process::Output {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("c.toml");
    std::fs::write(&p, toml).unwrap();
    Command::new(env!("CARGO_BIN_EXE_proxyseg"))
        .args(["config", "check", "--config"])
        .arg(&p)
        .output()
        .unwrap()
}

#[test]
fn shipped_config_is_valid() {
    use std::os::unix::fs::PermissionsExt;
    // As scripts/run leaves it: relative paths under the working directory, a private tokens file.
    let cwd = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(cwd.path().join("var")).unwrap();
    let tokens = cwd.path().join("var/admin-tokens");
    std::fs::write(&tokens, "admin admin 0123456789abcdef0123456789abcdef\n").unwrap();
    std::fs::set_permissions(&tokens, std::fs::Permissions::from_mode(0o600)).unwrap();
    let p = root().join("config/proxyseg.toml");
    let run = || {
        Command::new(env!("CARGO_BIN_EXE_proxyseg"))
            .current_dir(cwd.path())
            .args(["config", "check", "--config"])
            .arg(&p)
            .output()
            .unwrap()
    };
    // The default bundle (engine.default_bundle) must be installed under models_dir.
    let o = run();
    assert_eq!(o.status.code(), Some(1));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains(
            "engine.default_bundle: \"litemedsam-ppg\" is not a bundle under engine.models_dir"
        ) && err.contains("models/litemedsam-ppg/manifest.toml"),
        "{err}"
    );
    let bundle = cwd.path().join("models/litemedsam-ppg");
    std::fs::create_dir_all(&bundle).unwrap();
    std::fs::write(bundle.join("manifest.toml"), "").unwrap();
    let o = run();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
}

#[test]
fn problems_are_listed_with_their_keys() {
    let o = check("[dicom]\nlisten = \"nowhere\"\nmax_associations = 0\n[[dicom.peers]]\nae_title = \"A\\\\B\"\nhost = \"h\"\nport = 0\n[log]\nformat = \"xml\"\n");
    assert_eq!(o.status.code(), Some(1));
    let err = String::from_utf8_lossy(&o.stderr);
    for key in [
        "dicom.listen",
        "dicom.max_associations",
        "dicom.peers[0].ae_title",
        "dicom.peers[0].port",
        "log.format",
    ] {
        assert!(err.contains(key), "{key} missing from:\n{err}");
    }
}

#[test]
fn unknown_keys_and_missing_files_are_errors() {
    let o = check("[dicom]\nae_titel = \"X\"\n");
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("ae_titel"));
    let o = Command::new(env!("CARGO_BIN_EXE_proxyseg"))
        .args(["config", "check", "--config", "/nonexistent.toml"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("/nonexistent.toml"));
}

/// Review M5 / issue 16 item 6: an admin listener off loopback without `[admin.tls]` would
/// carry bearer tokens in cleartext: `config check` and `serve` refuse it unless
/// `admin.allow_insecure_remote = true`; loopback without TLS stays fine.
#[test]
fn remote_admin_without_tls_is_refused() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let tokens = dir.path().join("tokens");
    std::fs::write(&tokens, "admin admin 0123456789abcdef0123456789abcdef\n").unwrap();
    std::fs::set_permissions(&tokens, std::fs::Permissions::from_mode(0o600)).unwrap();
    let models = root().join("models");
    let config = |listen: &str, extra: &str| {
        let p = dir.path().join("c.toml");
        std::fs::write(
            &p,
            format!(
                "[dicom]\nlisten = \"127.0.0.1:0\"\n[[dicom.peers]]\nae_title = \"PACS\"\nhost = \"127.0.0.1\"\nport = 104\n\
                 [storage]\ndata_dir = \"{}\"\n[engine]\nmodels_dir = \"{}\"\n\
                 [admin]\nlisten = \"{listen}\"\ntokens_file = \"{}\"\n{extra}",
                dir.path().join("var").display(),
                models.display(),
                tokens.display()
            ),
        )
        .unwrap();
        p
    };
    let run = |cmd: &[&str], p: &std::path::Path| {
        Command::new(env!("CARGO_BIN_EXE_proxyseg"))
            .args(cmd)
            .arg("--config")
            .arg(p)
            .output()
            .unwrap()
    };
    for listen in ["0.0.0.0:50051", "[::]:50051", "192.0.2.10:50051"] {
        let p = config(listen, "");
        for cmd in [&["config", "check"][..], &["serve"][..]] {
            let o = run(cmd, &p);
            let err = String::from_utf8_lossy(&o.stderr);
            assert_eq!(o.status.code(), Some(1), "{cmd:?} {listen}: {err}");
            assert!(
                err.contains("admin.listen")
                    && err.contains("[admin.tls]")
                    && err.contains("allow_insecure_remote"),
                "{cmd:?} {listen}: {err}"
            );
        }
        let o = run(
            &["config", "check"],
            &config(listen, "allow_insecure_remote = true\n"),
        );
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    }
    for listen in ["127.0.0.1:50051", "[::1]:50051"] {
        let o = run(&["config", "check"], &config(listen, ""));
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    }
}
