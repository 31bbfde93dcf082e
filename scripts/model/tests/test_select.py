"""Checkpoint selection scores every candidate on the validation phantoms and copies the best."""
import json

import torch

from proxyseg_model import data, select
from proxyseg_model.build import build_test_tiny
from proxyseg_model.lora import add_lora
from proxyseg_model.train import save_checkpoint


def test_select_copies_the_best_validation_checkpoint(tmp_path, monkeypatch):
    monkeypatch.setattr(data, "VAL", range(3000, 3004))  # 4 targets per family keep it fast
    paths = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        model = build_test_tiny()
        add_lora(model.sam, rank=4)
        p = tmp_path / f"cand{seed}.pt"
        save_checkpoint(model, p, {"phase": "ppg", "steps": seed})
        paths.append(str(p))
    out, js = tmp_path / "best.pt", tmp_path / "sel.json"
    assert select.main(paths + ["--out", str(out), "--json", str(js)]) == 0
    res = json.loads(js.read_text())
    scores = {c: r["score"] for c, r in res["candidates"].items()}
    assert set(scores) == set(paths)
    assert res["selected"] == max(scores, key=scores.get)
    assert out.read_bytes() == open(res["selected"], "rb").read()
    for r in res["candidates"].values():
        for fam in data.FAMILIES:
            k = len(data.objects(fam))
            assert len(r["scores"][fam]["mean"]) == k and all(0 <= x <= 1 for x in r["scores"][fam]["mean"])
