"""Selective scan (Mamba S6 recurrence) without custom kernels.

    h_t = exp(dt_t * A) * h_{t-1} + dt_t * B_t * x_t
    y_t = <C_t, h_t> + D * x_t

`selective_scan` is the one implementation used for training and for ONNX export: a
chunked scan, out-of-place, fp32. The sequence of length L is cut into chunks of length c.
Inside each chunk the recurrence runs sequentially (c steps), vectorised across all chunks
at once; the chunk carries then run sequentially across chunks (L/c steps). The carry of a
chunk into position t is exp(sum of dt*A over the chunk prefix), a sum of NEGATIVE terms
(A < 0, dt > 0), so every factor stays in (0, 1] and nothing overflows (the exp(-cumsum)
rescaling trick gives inf/NaN once dt grows; this one cannot).

`selective_scan_ref` is the plain sequential reference, used by the tests.
"""
from __future__ import annotations

import torch


def selective_scan_ref(x, delta, A, B, C, D):
    """Sequential reference scan.

    Arguments:
      x (torch.Tensor): inputs, Bt x L x Di.
      delta (torch.Tensor): positive step sizes, Bt x L x Di.
      A (torch.Tensor): negative state matrix (diagonal), Di x N.
      B (torch.Tensor): input-dependent input matrix, Bt x L x N.
      C (torch.Tensor): input-dependent output matrix, Bt x L x N.
      D (torch.Tensor): skip, Di.

    Returns:
      (torch.Tensor): outputs y, Bt x L x Di.
    """
    bt, L, di = x.shape
    h = x.new_zeros(bt, di, A.shape[1])
    ys = []
    for t in range(L):
        dA = torch.exp(delta[:, t, :, None] * A)  # Bt x Di x N
        h = dA * h + delta[:, t, :, None] * B[:, t, None, :] * x[:, t, :, None]
        ys.append((h * C[:, t, None, :]).sum(-1))
    return torch.stack(ys, dim=1) + x * D


def _chunk_size(L: int) -> int:
    """Chunk length near sqrt(L) that divides L (both loops then have ~sqrt(L) steps)."""
    best = 1
    for c in range(1, L + 1):
        if L % c == 0 and c * c <= L:
            best = c
    return best


def selective_scan(x, delta, A, B, C, D, chunk: int | None = None):
    """Chunked selective scan: sequential inside chunks, vectorised across chunks.

    Arguments:
      x (torch.Tensor): inputs, Bt x L x Di (L static, as in a ViM at fixed input size).
      delta (torch.Tensor): positive step sizes, Bt x L x Di.
      A (torch.Tensor): negative state matrix (diagonal), Di x N.
      B (torch.Tensor): Bt x L x N.
      C (torch.Tensor): Bt x L x N.
      D (torch.Tensor): skip, Di.
      chunk (int or None): chunk length; must divide L. Default: the divisor of L nearest
        below sqrt(L).

    Returns:
      (torch.Tensor): outputs y, Bt x L x Di, float32.
    """
    x = x.float()
    delta = delta.float()
    bt, L, di = x.shape
    n = A.shape[1]
    c = chunk or _chunk_size(L)
    nc = L // c
    # per-step log-decay (<= 0) and input, Bt x nc x c x Di x N
    dA = (delta.unsqueeze(-1) * A).reshape(bt, nc, c, di, n)
    dBx = ((delta * x).unsqueeze(-1) * B.unsqueeze(2)).reshape(bt, nc, c, di, n)
    # 1) local states inside every chunk from a zero start (sequential over c, vectorised over
    #    nc). unbind (not indexing) keeps the backward pass free of full-size zero tensors.
    step_decay = torch.exp(dA).unbind(2)
    step_in = dBx.unbind(2)
    h = step_in[0]
    local = [h]
    for t in range(1, c):
        h = step_decay[t] * h + step_in[t]
        local.append(h)
    local = torch.stack(local, dim=2)  # Bt x nc x c x Di x N
    # decay from chunk start to position t: exp(cumsum of negative terms) in (0, 1]
    decay = torch.exp(torch.cumsum(dA, dim=2))  # Bt x nc x c x Di x N
    # 2) carries across chunks (sequential over nc): state entering chunk j
    end_decay = decay[:, :, c - 1].unbind(1)
    end_local = local[:, :, c - 1].unbind(1)
    carry = torch.zeros_like(end_local[0])
    carries = [carry]
    for j in range(nc - 1):
        carry = end_decay[j] * carry + end_local[j]
        carries.append(carry)
    carries = torch.stack(carries, dim=1)  # Bt x nc x Di x N
    # 3) full states and outputs
    hs = local + decay * carries.unsqueeze(2)
    y = (hs * C.float().reshape(bt, nc, c, 1, n)).sum(-1).reshape(bt, L, di)
    return y + x * D
