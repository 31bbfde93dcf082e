//! Checks of a bundle's files against its manifest: each graph's metadata_props, input and
//! output names, element types and static dimensions; the `[weights]` file's size and
//! sha256; and the fingerprint that keys the support-context cache.

use std::path::{Path, PathBuf};

use ort::session::Session;
use ort::value::{TensorElementType, ValueType};

use super::manifest::Manifest;
use super::{BundleError, Weights};

/// One expected dimension of a graph input or output.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Dim {
    /// Must equal this value when static.
    Is(usize),
    /// A batch-like dimension (B, N or K): dynamic, or static and recorded.
    Var(&'static str),
}

/// Static sizes of the variable dimensions found in the graphs (None = dynamic).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VarDims {
    /// Image encoder batch B.
    pub batch: Option<usize>,
    /// Support pairs N.
    pub pairs: Option<usize>,
    /// Objects K.
    pub objects: Option<usize>,
}

/// Checks the `[weights]` file: present, exactly `size` bytes, and `sha256`.
pub(super) fn check_weights(dir: &Path, wt: &Weights) -> Result<(), BundleError> {
    use sha2::{Digest, Sha256};
    use std::io::Read;
    let path = dir.join(&wt.file);
    let fail = |problem: String| BundleError::Weights {
        path: path.clone(),
        problem,
        sha256: wt.sha256.clone(),
        size: wt.size,
        setup: if wt.setup.trim().is_empty() {
            "(the manifest gives no setup)".into()
        } else {
            wt.setup.clone()
        },
    };
    let md = match std::fs::metadata(&path) {
        Ok(md) if md.is_file() => md,
        Ok(_) => return Err(fail("is not a file".into())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(fail("is missing".into()))
        }
        Err(e) => return Err(fail(format!("cannot be read ({e})"))),
    };
    if md.len() != wt.size {
        return Err(fail(format!("has {} bytes", md.len())));
    }
    // ONNX Runtime reads external data only from inside the graph's folder and refuses a link
    // that resolves elsewhere ("External data path escapes model directory"): say so here,
    // with the remedy, before any session is created.
    if let (Ok(real), Ok(home)) = (path.canonicalize(), dir.canonicalize()) {
        if !real.starts_with(&home) {
            return Err(fail(format!(
                "is a link to {}, outside the bundle folder; ONNX Runtime reads the graphs' external data only from inside it: copy the file into the bundle (or link the whole bundle folder instead)",
                real.display()
            )));
        }
    }
    let mut f = std::fs::File::open(&path).map_err(|e| fail(format!("cannot be read ({e})")))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f
            .read(&mut buf)
            .map_err(|e| fail(format!("cannot be read ({e})")))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    let got = hex::encode(h.finalize());
    if got != wt.sha256 {
        return Err(fail(format!("has sha256 {got}")));
    }
    tracing::debug!(file = %path.display(), sha256 = %got, "bundle weights verified");
    Ok(())
}

pub(super) fn fingerprint(manifest_text: &str, files: &[&Path]) -> String {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    h.update(manifest_text.as_bytes());
    for f in files {
        h.update(f.file_name().unwrap_or_default().as_encoded_bytes());
        // External data files (`<graph>.onnx.data`) count too.
        let mut data = f.as_os_str().to_owned();
        data.push(".data");
        for p in [f.to_path_buf(), PathBuf::from(data)] {
            if let Ok(md) = std::fs::metadata(&p) {
                h.update(md.len().to_le_bytes());
                if let Ok(t) = md.modified().and_then(|t| {
                    t.duration_since(std::time::UNIX_EPOCH)
                        .map_err(std::io::Error::other)
                }) {
                    h.update(t.as_nanos().to_le_bytes());
                }
            }
        }
    }
    hex::encode(h.finalize())[..16].to_string()
}

pub(super) fn check_metadata(session: &Session, m: &Manifest) -> Result<(), String> {
    let meta = session
        .metadata()
        .map_err(|e| format!("cannot read metadata_props: {e}"))?;
    let mut problems = Vec::new();
    for (key, want) in m.expected_metadata() {
        match meta.custom(key) {
            None => problems.push(format!("metadata_props lacks {key:?}")),
            Some(got) if !want.matches(&got) => problems.push(format!(
                "metadata_props {key} = {got:?} but the manifest says {}",
                want.show()
            )),
            Some(_) => {}
        }
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(problems.join("; "))
    }
}

/// The contract's only integer tensors (contract 2's memory slot rows).
const INT64_TENSORS: &[&str] = &["frame_tpos"];

pub(super) fn check_signature(
    what: &str,
    got: &[(String, ValueType)],
    want: &[(&str, &[Dim])],
    dims: &mut VarDims,
) -> Result<(), String> {
    let got_names: Vec<&str> = got.iter().map(|(n, _)| n.as_str()).collect();
    let want_names: Vec<&str> = want.iter().map(|(n, _)| *n).collect();
    let mut sorted_got = got_names.clone();
    sorted_got.sort_unstable();
    let mut sorted_want = want_names.clone();
    sorted_want.sort_unstable();
    if sorted_got != sorted_want {
        return Err(format!(
            "{what}s are {got_names:?} but the contract says {want_names:?}"
        ));
    }
    for (name, shape_want) in want {
        let Some((_, ty)) = got.iter().find(|(n, _)| n == name) else {
            continue;
        };
        let ValueType::Tensor { ty, shape, .. } = ty else {
            return Err(format!("{what} {name} is not a tensor"));
        };
        let want_ty = if INT64_TENSORS.contains(name) {
            TensorElementType::Int64
        } else {
            TensorElementType::Float32
        };
        if *ty != want_ty {
            return Err(format!(
                "{what} {name} is {ty:?}, the contract says {want_ty:?}"
            ));
        }
        if shape_want.is_empty() {
            continue;
        }
        let shape: Vec<i64> = shape.iter().copied().collect();
        if shape.len() != shape_want.len() {
            return Err(format!(
                "{what} {name} has rank {} ({shape:?}), the contract says rank {}",
                shape.len(),
                shape_want.len()
            ));
        }
        for (i, (&g, d)) in shape.iter().zip(shape_want.iter()).enumerate() {
            match *d {
                Dim::Is(v) => {
                    if g >= 0 && g as usize != v {
                        return Err(format!(
                            "{what} {name} dimension {i} is {g} ({shape:?}), the manifest implies {v}"
                        ));
                    }
                }
                Dim::Var(var) => {
                    if g >= 0 {
                        let slot = match var {
                            "B" => &mut dims.batch,
                            "N" => &mut dims.pairs,
                            _ => &mut dims.objects,
                        };
                        let g = g as usize;
                        match slot {
                            Some(prev) if *prev != g => {
                                return Err(format!(
                                    "{what} {name} fixes {var} = {g} but another graph fixes {var} = {prev}"
                                ))
                            }
                            _ => *slot = Some(g),
                        }
                    }
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::bundle::manifest::is_inside;

    #[test]
    fn weights_file_is_checked_for_size_and_hash() {
        use sha2::{Digest, Sha256};
        let dir = tempfile::tempdir().unwrap();
        let bytes = b"0123456789".repeat(300_000);
        std::fs::write(dir.path().join("w.bin"), &bytes).unwrap();
        let mut wt = Weights {
            file: "w.bin".into(),
            sha256: hex::encode(Sha256::digest(&bytes)),
            size: bytes.len() as u64,
            source: String::new(),
            setup: "run setup".into(),
        };
        check_weights(dir.path(), &wt).unwrap();
        wt.sha256 = "0".repeat(64);
        let e = check_weights(dir.path(), &wt).unwrap_err().to_string();
        assert!(e.contains("has sha256") && e.contains("run setup"), "{e}");
        wt.size += 1;
        let e = check_weights(dir.path(), &wt).unwrap_err().to_string();
        assert!(e.contains("has 3000000 bytes"), "{e}");
        // A link to a file outside the bundle is refused with the remedy; one inside is fine.
        let elsewhere = tempfile::tempdir().unwrap();
        std::fs::write(elsewhere.path().join("w.bin"), &bytes).unwrap();
        wt.size -= 1;
        wt.sha256 = hex::encode(Sha256::digest(&bytes));
        std::os::unix::fs::symlink(elsewhere.path().join("w.bin"), dir.path().join("out.bin"))
            .unwrap();
        std::os::unix::fs::symlink("w.bin", dir.path().join("in.bin")).unwrap();
        wt.file = "out.bin".into();
        let e = check_weights(dir.path(), &wt).unwrap_err().to_string();
        assert!(
            e.contains("outside the bundle folder") && e.contains("copy the file"),
            "{e}"
        );
        wt.file = "in.bin".into();
        check_weights(dir.path(), &wt).unwrap();
        wt.file = "nope.bin".into();
        let e = check_weights(dir.path(), &wt).unwrap_err().to_string();
        assert!(e.contains("nope.bin is missing"), "{e}");
        assert!(is_inside("a/b.pth") && is_inside("./b.pth"));
        assert!(!is_inside("a/../../b.pth") && !is_inside("/b") && !is_inside(""));
    }
}
