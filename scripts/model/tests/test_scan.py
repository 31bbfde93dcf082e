"""The chunked selective scan (used for training and export) against the sequential reference."""
import pytest
import torch
import torch.nn.functional as F

from proxyseg_model.scan import selective_scan, selective_scan_ref


def _inputs(b, L, d, n, dt_scale, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, L, d, generator=g)
    dt = F.softplus(torch.randn(b, L, d, generator=g) * dt_scale)
    A = -torch.exp(torch.randn(d, n, generator=g))
    B = torch.randn(b, L, n, generator=g)
    C = torch.randn(b, L, n, generator=g)
    D = torch.randn(d, generator=g)
    return x, dt, A, B, C, D


@pytest.mark.parametrize("L,chunk", [(256, None), (256, 8), (64, 16), (36, None), (7, 1)])
def test_chunked_matches_sequential(L, chunk):
    args = _inputs(2, L, 6, 4, 1.0)
    y = selective_scan(*args, chunk=chunk)
    ref = selective_scan_ref(*args)
    assert y.shape == ref.shape == (2, L, 6)
    assert torch.allclose(y, ref, atol=1e-4, rtol=1e-4), (y - ref).abs().max()


def test_large_steps_stay_finite():
    """dt far above 1 (where exp(-cumsum) rescaling overflows): carries are exp of negative sums."""
    x, dt, A, B, C, D = _inputs(1, 256, 4, 4, 1.0, seed=1)
    dt = dt * 50 + 5
    y = selective_scan(x, dt, A, B, C, D)
    ref = selective_scan_ref(x, dt, A, B, C, D)
    assert torch.isfinite(y).all()
    assert torch.allclose(y, ref, atol=1e-3, rtol=1e-4)


def test_gradients_match_reference():
    args = [a.clone().requires_grad_(True) for a in _inputs(1, 32, 3, 2, 1.0, seed=2)]
    selective_scan(*args, chunk=4).square().sum().backward()
    g1 = [a.grad.clone() for a in args]
    for a in args:
        a.grad = None
    selective_scan_ref(*args).square().sum().backward()
    for a, b in zip(g1, [a.grad for a in args]):
        assert torch.allclose(a, b, atol=1e-3, rtol=1e-3)
