"""Helpers shared by the test-suite and by anyone checking a new backend against the spec.

The tolerance rule follows attention-gym: an implementation in dtype ``d`` may be at most twice
as far from the float64 reference as the reference itself computed in ``d``, plus a small floor
(:func:`error_floor`) for outputs that the eager path happens to get exactly right.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Literal

import torch

from ..ops.reference import delta_attention_reference

__all__ = [
    "AttentionInputs",
    "MaskKind",
    "error_floor",
    "make_inputs",
    "make_mask",
    "reference_errors",
]

MaskKind = Literal["none", "bool", "additive", "key_padding"]


@dataclass
class AttentionInputs:
    q: torch.Tensor  # [B, Hq, N, D]
    k: torch.Tensor  # [B, Hkv, N, D]
    v: torch.Tensor  # [B, Hkv, N, Dv]
    attn_mask: torch.Tensor | None

    def to(self, dtype: torch.dtype) -> "AttentionInputs":
        mask = self.attn_mask
        if mask is not None and mask.dtype.is_floating_point:
            mask = mask.to(dtype)
        return AttentionInputs(self.q.to(dtype), self.k.to(dtype), self.v.to(dtype), mask)


def make_mask(
    kind: MaskKind, batch: int, heads: int, n: int, *, generator: torch.Generator, dtype: torch.dtype = torch.float64
) -> torch.Tensor | None:
    """A mask of the given kind, broadcastable to [batch, heads, n, n].

    ``bool``: random [batch, 1, n, n], True = may attend, a few rows entirely False;
    ``additive``: random finite biases [1, heads, n, n] with -inf holes, one row all -inf;
    ``key_padding``: [batch, 1, 1, n], the last keys of each sequence padded out.
    """
    if kind == "none":
        return None
    if kind == "bool":
        mask = torch.rand(batch, 1, n, n, generator=generator) > 0.3
        mask[:, :, n // 3] = False  # an empty row must give zeros
        return mask
    if kind == "additive":
        mask = torch.randn(1, heads, n, n, generator=generator, dtype=torch.float64)
        holes = torch.rand(1, heads, n, n, generator=generator) < 0.2
        mask = mask.masked_fill(holes, float("-inf"))
        mask[:, :, n // 2] = float("-inf")
        return mask.to(dtype)
    if kind == "key_padding":
        lengths = torch.randint(max(1, n // 2), n + 1, (batch,), generator=generator)
        return (torch.arange(n).view(1, 1, 1, n) < lengths.view(batch, 1, 1, 1))
    raise ValueError(f"mask kind must be one of none, bool, additive, key_padding; got {kind!r}")


def make_inputs(
    *,
    batch: int = 1,
    q_heads: int = 4,
    kv_heads: int = 2,
    n: int = 64,
    head_dim: int = 64,
    value_dim: int | None = None,
    mask: MaskKind = "none",
    seed: int = 0,
    dtype: torch.dtype = torch.float64,
    device: str | torch.device = "cpu",
) -> AttentionInputs:
    """Random attention inputs (standard normal) for tests, in float64 unless asked otherwise."""
    g = torch.Generator().manual_seed(seed)
    value_dim = head_dim if value_dim is None else value_dim
    q = torch.randn(batch, q_heads, n, head_dim, generator=g, dtype=torch.float64)
    k = torch.randn(batch, kv_heads, n, head_dim, generator=g, dtype=torch.float64)
    v = torch.randn(batch, kv_heads, n, value_dim, generator=g, dtype=torch.float64)
    attn_mask = make_mask(mask, batch, q_heads, n, generator=g)
    inputs = AttentionInputs(q, k, v, attn_mask).to(dtype)
    inputs.q, inputs.k, inputs.v = (t.to(device) for t in (inputs.q, inputs.k, inputs.v))
    if inputs.attn_mask is not None:
        inputs.attn_mask = inputs.attn_mask.to(device)
    return inputs


def error_floor(dtype: torch.dtype) -> float:
    """Absolute slack added to the data-derived tolerance: a few units of the dtype's rounding."""
    return {torch.float64: 1e-12, torch.float32: 1e-6, torch.float16: 2e-3, torch.bfloat16: 1.6e-2}[dtype]


def reference_errors(
    impl: Callable[..., torch.Tensor], inputs: AttentionInputs, dtype: torch.dtype, **params: object
) -> tuple[float, float]:
    """(max |impl(x_d) - ref(x_64)|, max |ref(x_d) - ref(x_64)|) for inputs cast to ``dtype``.

    The second number is what rounding alone costs the eager spec in that dtype; tests accept
    ``first <= 2 * second + error_floor(dtype)``.
    """
    x64 = inputs.to(torch.float64)
    xd = inputs.to(dtype)
    oracle = delta_attention_reference(x64.q, x64.k, x64.v, x64.attn_mask, **params)  # type: ignore[arg-type]
    eager = delta_attention_reference(xd.q, xd.k, xd.v, xd.attn_mask, **params)  # type: ignore[arg-type]
    got = impl(xd.q, xd.k, xd.v, xd.attn_mask, **params)
    assert got.dtype == dtype, f"implementation returned {got.dtype}, expected {dtype}"
    impl_err = (got.double().cpu() - oracle.cpu()).abs().max().item() if got.numel() else 0.0
    eager_err = (eager.double().cpu() - oracle.cpu()).abs().max().item() if eager.numel() else 0.0
    return impl_err, eager_err
