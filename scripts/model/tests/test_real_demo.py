"""real_demo.py's demo folder: the bundle the daemon will load from it."""
from pathlib import Path

from proxyseg_model.real_demo import link_bundle


def test_demo_bundle_holds_its_weights_file_inside_the_folder(tmp_path: Path):
    """The engine refuses a [weights] file that links outside the bundle folder (ONNX Runtime
    reads external data only from inside it), so the demo folder gets the checkpoint itself
    (hard link, or a copy) and symbolic links for everything else."""
    src = tmp_path / "bundle"
    src.mkdir()
    (src / "manifest.toml").write_text('name = "b"\n[weights]\nfile = "w.pth"\nsha256 = "00"\nsize = 3\n')
    (src / "w.pth").write_bytes(b"abc")
    (src / "g.onnx").write_bytes(b"graph")
    (src / "fixtures").mkdir()
    dest = tmp_path / "demo" / "bundle"
    dest.mkdir(parents=True)
    link_bundle(src, dest)
    w = dest / "w.pth"
    assert w.is_file() and not w.is_symlink() and w.read_bytes() == b"abc"
    assert (dest / "g.onnx").is_symlink() and (dest / "g.onnx").resolve() == (src / "g.onnx").resolve()
    assert (dest / "manifest.toml").is_symlink()
    assert not (dest / "fixtures").exists(), "sub-folders are the demo's own"
