"""The attention variants a fidelity study compares, each computed exactly as defined.

With ``O_d`` dense and ``O_s`` sliding-window + sinks attention (DESIGN §1) and
``Np = floor((N - T) / G) * G``:

- ``DENSE``:        O(i) = O_d(i) for every row;
- ``SPARSE``:       O(i) = O_s(i) for every row (no tail, no correction);
- ``SPARSE_TAIL``:  O(i) = O_s(i) for i < Np, O_d(i) for i >= Np (the dense tail, no correction);
- ``DELTA``:        the op as ``config`` asks (the paper's correction unless it names another).

``SPARSE`` vs ``SPARSE_TAIL`` isolates what the dense tail buys; only ``SPARSE_TAIL`` vs
``DELTA`` is the correction's own effect. Every variant but ``DENSE`` is the op itself with a
config derived from the given one (:func:`variant_config`): ``SPARSE_TAIL`` is the rule
``none``, and ``SPARSE`` the rule ``none`` with stride 1 and no tail, so that every row is a
sparse row. On the CPU they all run ``blocked``, so SPARSE_TAIL and DELTA share their sparse
rows bit for bit and differ by the correction alone.
"""

from __future__ import annotations

import enum

import torch

from ..config import DeltaConfig
from ..integrations.transformers import AttentionCore, delta_core, dense_attention
from ..plan import Correction

__all__ = ["Variant", "variant_attention", "variant_config", "variant_core"]


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


def variant_config(variant: Variant | str, config: DeltaConfig) -> DeltaConfig | None:
    """The op config that computes ``variant`` from ``config`` (None for ``DENSE``)."""
    variant = Variant.parse(variant)
    if not isinstance(config, DeltaConfig):
        raise ValueError(f"config must be a delta_opt.DeltaConfig; got {type(config).__name__}")
    if variant is Variant.DENSE:
        return None
    if variant is Variant.DELTA:
        return config
    uncorrected = config.replace(correction=Correction.NONE, retrieve=0, layer_plans=())
    if variant is Variant.SPARSE_TAIL:
        return uncorrected
    return uncorrected.replace(stride=1, tail=0)  # SPARSE: Np = N, every row sparse


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
    layer: int | None = None,
) -> torch.Tensor:
    """One variant's attention output: q [B, Hq, N, D], k [B, Hkv, N, D], v [B, Hkv, N, Dv] -> [B, Hq, N, Dv].

    ``attn_mask`` is in the op's form (bool True = may attend, or additive, broadcastable to
    [B, Hq, N, N]); ``config`` supplies W, S, G, T, the rule (and ``impl``); ``layer`` selects a
    calibrated config's plan.
    """
    core = variant_core(variant, config)
    if q.shape[2] != k.shape[2]:
        raise ValueError(
            f"variants are defined for prefill (q and k of one length); got Nq={q.shape[2]}, Nk={k.shape[2]}"
        )
    return core(q, k, v, attn_mask, causal=causal, scale=scale, layer=layer)


def variant_core(variant: Variant | str, config: DeltaConfig) -> AttentionCore:
    """The variant as the core of the ``"delta"`` HF attention (see ``HFConversion.set_core``)."""
    derived = variant_config(variant, config)
    if derived is not None:
        return delta_core(derived)

    def dense(q, k, v, attn_mask, *, causal, scale, layer):
        if attn_mask is None:
            return dense_attention(q, k, v, causal=causal, scale=scale)  # SDPA's causal path skips masked work
        # A mask: the op with a window over everything is dense attention with it.
        return delta_core(config.replace(window=q.shape[2] + 1, layer_plans=()))(
            q, k, v, attn_mask, causal=causal, scale=scale, layer=layer
        )

    return dense
