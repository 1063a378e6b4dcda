"""The attention variants a fidelity study compares, each computed exactly as defined.

With ``O_d`` dense and ``O_s`` sliding-window + sinks attention (DESIGN §1) and
``Np = floor((N - T) / G) * G``:

- ``DENSE``:        O(i) = O_d(i) for every row;
- ``SPARSE``:       O(i) = O_s(i) for every row (no tail, no correction);
- ``SPARSE_TAIL``:  O(i) = O_s(i) for i < Np, O_d(i) for i >= Np (the dense tail, no correction);
- ``DELTA``:        the op, ``delta_opt::delta_attention`` (sparse + tail + the anchor correction).

``SPARSE`` vs ``SPARSE_TAIL`` isolates what the dense tail buys; only ``SPARSE_TAIL`` vs
``DELTA`` is the correction's own effect. ``DELTA`` is the op the integration runs; the other
three are assembled from the op's own row kernels (``delta_opt.ops.blocked``: sliding-window +
sink rows in query blocks, dense rows in chunks), so their cost is that of the rows they compute.
"""

from __future__ import annotations

import enum

import torch

from ..config import DeltaConfig
from ..integrations.transformers import AttentionCore, delta_core, dense_attention
from ..ops.blocked import _as_4d, _dense_rows, _sparse_rows, default_block_size
from ..ops.checks import check_inputs, num_corrected_rows, resolve_scale

__all__ = ["Variant", "variant_attention", "variant_core"]


class Variant(str, enum.Enum):
    """Which attention a converted model runs on prefill (see the module docstring)."""

    DENSE = "dense"
    SPARSE = "sparse"
    SPARSE_TAIL = "sparse_tail"
    DELTA = "delta"

    @classmethod
    def parse(cls, value: "Variant | str") -> "Variant":
        if isinstance(value, cls):
            return value
        try:
            return cls(str(value).lower())
        except ValueError:
            valid = ", ".join(repr(v.value) for v in cls)
            raise ValueError(f"variant must be one of {valid}; got {value!r}") from None


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    return dtype if dtype in (torch.float32, torch.float64) else torch.float32


def variant_attention(
    variant: Variant | str,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    attn_mask: torch.Tensor | None = None,
    *,
    causal: bool,
    config: DeltaConfig,
    scale: float | None = None,
) -> torch.Tensor:
    """One variant's attention output: q [B, Hq, N, D], k [B, Hkv, N, D], v [B, Hkv, N, Dv] -> [B, Hq, N, Dv].

    ``attn_mask`` is in the op's form (bool True = may attend, or additive, broadcastable to
    [B, Hq, N, N]); ``config`` supplies W, S, G, T (and ``impl`` for ``DELTA``).
    """
    variant = Variant.parse(variant)
    if not isinstance(config, DeltaConfig):
        raise ValueError(f"config must be a delta_opt.DeltaConfig; got {type(config).__name__}")
    if variant is Variant.DELTA:
        return delta_core(config)(q, k, v, attn_mask, causal=causal, scale=scale)
    shape = check_inputs(q, k, v, attn_mask, causal=causal, window=config.window, sinks=config.sinks,
                         stride=config.stride, tail=config.tail, scale=scale)  # fmt: skip
    if shape.q_len != shape.kv_len:
        raise ValueError(
            f"variants are defined for prefill (q and k of one length); got Nq={shape.q_len}, Nk={shape.kv_len}"
        )
    n = shape.q_len
    scale = resolve_scale(scale, shape.head_dim)
    if variant is Variant.DENSE and attn_mask is None:
        return dense_attention(q, k, v, causal=causal, scale=scale)  # SDPA's causal path skips masked work
    # The op's own building blocks (delta_opt.ops.blocked), so that the sparse rows here are
    # bit-for-bit the sparse rows inside DELTA on the CPU (where it runs `blocked`): SPARSE_TAIL
    # vs DELTA then differs by the anchor correction alone, rounding included.
    dtype = _compute_dtype(q.dtype)
    mask = None if attn_mask is None else _as_4d(attn_mask)
    n_sparse = {
        Variant.DENSE: 0,
        Variant.SPARSE: n,
        Variant.SPARSE_TAIL: num_corrected_rows(n, config.stride, config.resolved_tail),
    }[variant]
    out = q.new_empty(shape.batch, shape.q_heads, n, shape.value_dim, dtype=dtype)
    if n_sparse < n:
        rows = torch.arange(n_sparse, n, device=q.device)
        out[:, :, n_sparse:] = _dense_rows(q, k, v, mask, rows, causal=causal, offset=0, scale=scale, dtype=dtype)
    if n_sparse:
        _sparse_rows(q, k, v, mask, out, n_rows=n_sparse, causal=causal, window=config.window, sinks=config.sinks,
                     scale=scale, block=default_block_size(config.window))  # fmt: skip
    return out.to(q.dtype)


def variant_core(variant: Variant | str, config: DeltaConfig) -> AttentionCore:
    """The variant as the core of the ``"delta"`` HF attention (see ``HFConversion.set_core``)."""
    variant = Variant.parse(variant)
    if variant is Variant.DELTA:
        return delta_core(config)

    def core(q, k, v, attn_mask, *, causal, scale):
        return variant_attention(variant, q, k, v, attn_mask, causal=causal, config=config, scale=scale)

    return core
