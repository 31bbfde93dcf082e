"""One few-shot training step (SGD, Dice loss, SAM frozen + LoRA) decreases the loss."""
import numpy as np
import torch

from proxyseg_model.build import build_test_tiny
from proxyseg_model.lora import LoRALinear, add_lora, merge_lora
from proxyseg_model.losses import dice_loss, upscale
from proxyseg_model.train import episode


def _corpus(S=64, n=4, k=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    masks = torch.zeros(n, k, S, S)
    for i in range(n):
        for j in range(k):
            y, x = torch.randint(8, S - 24, (2,), generator=g)
            masks[i, j, y:y + 16, x:x + 16] = 1
    images = torch.randn(n, 3, S, S, generator=g) * 0.2 + masks.sum(1, keepdim=True)
    return {"images": images, "masks": masks}


def test_one_step_decreases_loss():
    torch.manual_seed(0)
    model = build_test_tiny()
    add_lora(model.sam, rank=2)
    params = [p for p in model.parameters() if p.requires_grad]
    assert params and all(not p.requires_grad for n, p in model.sam.named_parameters() if "lora" not in n)
    # the paper's SGD (momentum 0.9, wd 5e-4); a larger lr than its 0.01 so that one step on an
    # untrained test-size model moves the loss by more than float32 rounding
    opt = torch.optim.SGD(params, lr=0.5, momentum=0.9, weight_decay=5e-4)
    tgt, si, sm, tm = episode(np.random.default_rng(0), _corpus(), max_support=2)

    def loss():
        logits, iou = model(tgt, si, sm)
        assert logits.shape == (sm.shape[1], 1, 16, 16) and iou.shape == (sm.shape[1], 1)
        return dice_loss(upscale(logits, 64), tm)
    before = loss()
    opt.zero_grad()
    before.backward()
    opt.step()
    with torch.no_grad():
        after = loss()
    assert after.item() < before.item()


def test_lora_merge_is_exact():
    torch.manual_seed(0)
    model = build_test_tiny().eval()
    add_lora(model.sam, rank=2)
    for m in model.modules():
        if isinstance(m, LoRALinear):
            torch.nn.init.normal_(m.lora_b, std=0.1)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        a = model.sam.encode(x)
        merge_lora(model)
        b = model.sam.encode(x)
    assert not any(isinstance(m, LoRALinear) for m in model.modules())
    assert torch.allclose(a, b, atol=1e-5)


def test_slim_run_parts_round_trip(tmp_path):
    """A run saved as slim parts (what a GPU machine hands back) loads into the same model."""
    from argparse import Namespace
    from proxyseg_model.build import build_litemedsam
    from proxyseg_model.train_lite import load_run, run_state, save_run
    torch.manual_seed(0)
    model = build_litemedsam()
    model.sync_point_tokens()
    add_lora(model.sam, rank=4, encoder=False)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if p.requires_grad:
                p.add_(torch.randn_like(p) * 0.01)
    args = Namespace(slim_out=str(tmp_path / "slim"), slim_dtype="float32", out="", device="cpu")
    save_run(model, args, {"steps": 7})
    parts = sorted((tmp_path / "slim").glob("slim-*.pt"))
    assert len(parts) >= 2 and all(p.stat().st_size < 16e6 for p in parts)
    ck = load_run(tmp_path / "slim")
    assert ck["slim"] and ck["extra"] == {"steps": 7}
    mine = run_state(model)
    assert set(ck["state"]) == set(mine) and any(".lora_" in k for k in mine)
    assert all(torch.equal(ck["state"][k], mine[k]) for k in mine)
    # no frozen LiteMedSAM tensor travels: it comes from lite_medsam.pth
    assert not any(k.startswith("sam.") and ".lora_" not in k for k in ck["state"])
    other = build_litemedsam()
    other.sync_point_tokens()
    add_lora(other.sam, rank=4, encoder=False)
    missing, unexpected = other.load_state_dict(ck["state"], strict=False)
    assert not unexpected and not any(k.startswith("ppg.") for k in missing)
    assert all(torch.equal(other.state_dict()[k], v) for k, v in model.state_dict().items())


def test_scale_views_shrink_and_enlarge_the_object():
    """train_lite's @scale views: same frame size, the object's area scaled by ~factor^2, a
    zoomed-out object whole on a black field, a zoomed-in one cut around one of its pixels."""
    from proxyseg_model.train_lite import _rescale
    h, w = 120, 160
    yy, xx = np.mgrid[:h, :w]
    masks = (((yy - 60) / 30.0) ** 2 + ((xx - 80) / 40.0) ** 2 <= 1)[None]
    display = np.full((h, w, 3), 100.0, np.float32)
    display[masks[0]] = 200.0
    rng = np.random.default_rng(0)
    area = masks[0].sum()
    for f in (0.55, 0.8):
        d, m = _rescale(display, masks, f, rng)
        assert d.shape == display.shape and m.shape == masks.shape and m.dtype == masks.dtype
        assert abs(m[0].sum() / area - f * f) < 0.06, (f, m[0].sum() / area)
        assert abs((d[..., 0] == 0).mean() - (1 - f * f)) < 0.05  # the rest is a black field
        assert d[m[0]].mean() > 190  # the object's pixels moved with its mask
    for f in (1.1, 1.5):
        d, m = _rescale(display, masks, f, rng)
        assert d.shape[:2] == m.shape[1:] == (round(h / f), round(w / f))
        assert m[0].any() and np.array_equal(d[..., 0] == 200.0, m[0])  # the crop of the same pixels


def test_single_support_share_draws_one_pair_that_often():
    """train_lite.episode: `single` is the share of one-pair episodes; the rest draw 1..max
    uniformly; at single = 0 the draws are those of earlier runs (no extra random draw)."""
    from proxyseg_model.train_lite import episode as lite_episode
    n = 12
    corp = {"case": torch.arange(n), "pos": torch.zeros(n, dtype=torch.long), "cases": [str(i) for i in range(n)],
            "emb": torch.zeros(n, 4, 2, 2), "images": torch.zeros(n, 3, 8, 8), "masks": torch.ones(n, 1, 8, 8)}

    def ones(single, draws=600, seed=0):
        rng = np.random.default_rng(seed)
        return np.mean([lite_episode(rng, corp, 3, single=single)[1].shape[0] == 1 for _ in range(draws)])

    assert abs(ones(0.0) - 1 / 3) < 0.06
    assert abs(ones(0.5) - (0.5 + 0.5 / 3)) < 0.06
    assert ones(1.0) == 1.0
    corp["images"] = torch.arange(n, dtype=torch.float32).view(n, 1, 1, 1).expand(n, 3, 8, 8).clone()
    a, b = np.random.default_rng(3), np.random.default_rng(3)
    for _ in range(20):  # the default draws as before --single-support existed: target, count, pairs
        t = int(b.integers(n))
        ok = np.array([i for i in range(n) if i != t])
        want = b.choice(ok, int(b.integers(1, 4)), replace=False)
        got = lite_episode(a, corp, 3)[1][:, 0, 0, 0].long().numpy()
        assert np.array_equal(got, want)


def test_soup_mixes_floating_tensors_and_refuses_other_models():
    """soup.mix: (1 - alpha) a + alpha b tensor by tensor; integer buffers from a; runs with
    other tensors or shapes are refused."""
    import pytest
    from proxyseg_model.soup import mix
    a = {"w": torch.zeros(2, 3), "n": torch.tensor([4])}
    b = {"w": torch.ones(2, 3) * 2, "n": torch.tensor([9])}
    m = mix(a, b, 0.25)
    assert torch.allclose(m["w"], torch.full((2, 3), 0.5)) and m["n"].item() == 4
    assert torch.equal(mix(a, b, 0.0)["w"], a["w"]) and torch.equal(mix(a, b, 1.0)["w"], b["w"])
    with pytest.raises(SystemExit):
        mix(a, {"w": b["w"]}, 0.5)
    with pytest.raises(SystemExit):
        mix(a, {"w": torch.ones(3, 2), "n": b["n"]}, 0.5)
