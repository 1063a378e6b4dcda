"""The attention variants a fidelity study compares, each computed exactly as defined.

With ``O_d`` dense and ``O_s`` sliding-window + sinks attention (DESIGN §1) and
``Np = floor((N - T) / G) * G``:

- ``DENSE``:        O(i) = O_d(i) for every row;
- ``SPARSE``:       O(i) = O_s(i) for every row (no tail, no correction);
- ``SPARSE_TAIL``:  O(i) = O_s(i) for i < Np, O_d(i) for i >= Np (the dense tail, no correction);
- ``DELTA``:        the op, ``delta_opt::delta_attention`` (sparse + tail + the anchor correction).

``SPARSE`` vs ``SPARSE_TAIL`` isolates what the dense tail buys; only ``SPARSE_TAIL`` vs
``DELTA`` is the correction's own effect. The first three are computed here with masked SDPA
(O(N^2) work, fine for evaluation lengths); ``DELTA`` is the op the integration runs.
"""

from __future__ import annotations

import enum
import functools

import torch
import torch.nn.functional as F

from ..config import DeltaConfig
from ..integrations.transformers import AttentionCore, delta_core, dense_attention
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


@functools.lru_cache(maxsize=8)
def _structure(n: int, causal: bool, window: int, sinks: int, device: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(dense, sparse) bool [N, N] "may attend" patterns; cached because every layer asks for the same."""
    i = torch.arange(n, device=device).view(-1, 1)
    j = torch.arange(n, device=device).view(1, -1)
    dense = (j <= i) if causal else torch.ones(n, n, dtype=torch.bool, device=device)
    sparse = dense & (((i - j).abs() < window) | (j < sinks))
    return dense, sparse


def _masked_sdpa(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, allowed: torch.Tensor, user: torch.Tensor | None, scale: float
) -> torch.Tensor:
    """Attention of q [B, Hq, Nq, D] over the keys ``allowed`` [Nq, Nk] (and the user's mask).

    A row with no allowed key gives zeros (SDPA does so for all -inf rows), as the spec asks.
    """
    dtype = q.dtype if q.dtype in (torch.float32, torch.float64) else torch.float32
    bias = torch.zeros(allowed.shape, dtype=dtype, device=q.device).masked_fill_(~allowed, float("-inf"))
    if user is not None:
        if user.dtype == torch.bool:
            bias = torch.where(user, bias, torch.tensor(float("-inf"), dtype=dtype, device=q.device))
        else:
            bias = bias + user.to(dtype)
    out = F.scaled_dot_product_attention(
        q.to(dtype), k.to(dtype), v.to(dtype), attn_mask=bias, scale=scale, enable_gqa=q.shape[1] != k.shape[1]
    )
    return out.to(q.dtype)


def _rows(mask: torch.Tensor | None, rows: slice) -> torch.Tensor | None:
    if mask is None:
        return None
    while mask.dim() < 4:
        mask = mask.unsqueeze(0)
    return mask if mask.shape[2] == 1 else mask[:, :, rows]


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
        raise ValueError(f"variants are defined for prefill (q and k of one length); got Nq={shape.q_len}, Nk={shape.kv_len}")
    n = shape.q_len
    scale = resolve_scale(scale, shape.head_dim)
    dense, sparse = _structure(n, causal, config.window, config.sinks, str(q.device))
    if variant is Variant.DENSE:
        if attn_mask is None:  # SDPA's own causal path skips the masked half of the work
            return dense_attention(q, k, v, causal=causal, scale=scale)
        return _masked_sdpa(q, k, v, dense, _rows(attn_mask, slice(None)), scale)
    if variant is Variant.SPARSE:
        return _masked_sdpa(q, k, v, sparse, _rows(attn_mask, slice(None)), scale)
    # SPARSE_TAIL: sparse rows [0, Np), dense rows [Np, N).
    n_sparse = num_corrected_rows(n, config.stride, config.resolved_tail)
    head, tail = slice(0, n_sparse), slice(n_sparse, n)
    out = q.new_empty(shape.batch, shape.q_heads, n, shape.value_dim)
    if n_sparse:
        out[:, :, head] = _masked_sdpa(q[:, :, head], k, v, sparse[head], _rows(attn_mask, head), scale)
    if n_sparse < n:
        out[:, :, tail] = _masked_sdpa(q[:, :, tail], k, v, dense[tail], _rows(attn_mask, tail), scale)
    return out


def variant_core(variant: Variant | str, config: DeltaConfig) -> AttentionCore:
    """The variant as the core of the ``"delta"`` HF attention (see ``HFConversion.set_core``)."""
    variant = Variant.parse(variant)
    if variant is Variant.DELTA:
        return delta_core(config)

    def core(q, k, v, attn_mask, *, causal, scale):
        return variant_attention(variant, q, k, v, attn_mask, causal=causal, config=config, scale=scale)

    return core
