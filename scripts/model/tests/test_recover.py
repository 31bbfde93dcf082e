"""Training checkpoints recovered from the shipped bundle (recover.py): a fresh clone can resume
train_lite and train_memory, and a bundle that lacks a trained tensor is refused by name."""
import shutil
from pathlib import Path

import onnx
import pytest
import torch

from proxyseg_model.recover import RecoverError, check_clip, recover_memory, recover_ppg
from proxyseg_model.train import load_checkpoint, save_checkpoint
from proxyseg_model.train_lite import run_state
from proxyseg_model.train_memory import load_memory, save_memory

BUNDLE = Path(__file__).resolve().parents[3] / "models" / "litemedsam-ppg"


def test_recovered_checkpoints_reproduce_the_bundle(tmp_path):
    """PPG + LoRA and the memory modules read back from the graphs: saved in the training
    formats, loaded again as train_lite / train_memory do, they reproduce the shipped memory
    fixture (the whole 8-frame loop) within the tolerance it was exported with."""
    assert (BUNDLE / "lite_medsam.pth").exists(), "scripts/test puts lite_medsam.pth into the bundle"
    model, extra = recover_ppg(BUNDLE, None)
    lora = [k for k in run_state(model) if ".lora_" in k]
    assert lora and all(model.state_dict()[k].abs().sum() > 0 for k in lora if k.endswith("lora_b")), \
        "the decoder's LoRA factors came back empty"
    assert int(extra["total_steps"]) > 0
    detail = [k for k in run_state(model) if k.startswith("detail.")]
    assert detail and model.state_dict()["detail.gate.weight"].abs().sum() > 0, \
        "the decoder's detail branch came back empty (its gate starts at zero)"
    ppg = tmp_path / "lite.pt"
    save_checkpoint(model, ppg, extra)
    enc, att, cfg, mextra = recover_memory(BUNDLE)
    mem = tmp_path / "mem.pt"
    save_memory(mem, cfg, enc, att, mextra)
    enc2, att2, ck = load_memory(mem)
    diff = check_clip(BUNDLE, ppg, enc2, att2, cfg)
    assert diff < 5e-3, diff
    reloaded, _ = load_checkpoint(ppg)
    for k, v in run_state(model).items():
        assert torch.equal(reloaded.state_dict()[k], v), k


def test_a_missing_trained_tensor_is_refused_by_name(tmp_path):
    """Nothing is guessed: a graph without one of the PPG's tensors stops the recovery with its
    name."""
    for f in BUNDLE.iterdir():
        if f.suffix == ".pth":  # ONNX refuses external data behind a link
            shutil.copyfile(f, tmp_path / f.name)
        elif f.is_file():
            (tmp_path / f.name).symlink_to(f)
    (tmp_path / "prompt_generator.onnx").unlink()
    proto = onnx.load(str(BUNDLE / "prompt_generator.onnx"), load_external_data=False)
    victim = next(t for t in proto.graph.initializer if t.name.startswith("ppg.ccm."))
    victim.name = "renamed"
    onnx.save(proto, str(tmp_path / "prompt_generator.onnx"))
    with pytest.raises(RecoverError, match="not in the graphs"):
        recover_ppg(tmp_path, str(BUNDLE / "lite_medsam.pth"))


def test_a_bundle_without_memory_mode_says_so(tmp_path):
    shutil.copyfile(BUNDLE.parent / "phantom-tiny" / "manifest.toml", tmp_path / "manifest.toml")
    with pytest.raises(RecoverError, match="no memory mode"):
        recover_memory(tmp_path)


def test_recovery_reads_a_hard_linked_checkpoint(tmp_path):
    """real_demo.py hard-links lite_medsam.pth into each demo folder; onnx's own external-data
    loader then refuses the file ("hardlink attack"), so recovery reads it itself."""
    import os
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    for f in BUNDLE.iterdir():
        if f.is_file():
            shutil.copyfile(f, bundle / f.name)
    os.link(bundle / "lite_medsam.pth", tmp_path / "demo-link.pth")
    assert (bundle / "lite_medsam.pth").stat().st_nlink == 2
    model, extra = recover_ppg(bundle, None)
    assert int(extra["total_steps"]) > 0
    assert model.state_dict()["detail.gate.weight"].abs().sum() > 0
