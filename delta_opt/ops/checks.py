"""Validation of ``delta_attention`` arguments, shared by every implementation.

All checks run before any work and raise ``ValueError`` naming the argument and the expected
form. They only read shapes, dtypes and devices, so they also run on fake tensors while
``torch.export`` traces the op.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..config import default_tail
from ..plan import parse_corrections

__all__ = ["AttentionShape", "check_inputs", "resolve_scale", "resolve_tail"]


@dataclass(frozen=True)
class AttentionShape:
    """Sizes read off validated inputs: q [B, Hq, Nq, D], k [B, Hkv, Nk, D], v [B, Hkv, Nk, Dv]."""

    batch: int
    q_heads: int
    kv_heads: int
    q_len: int
    kv_len: int
    head_dim: int
    value_dim: int

    @property
    def group(self) -> int:
        """Query heads per kv head: query head h reads kv head ``h // group``."""
        return self.q_heads // self.kv_heads


def _shape(t: torch.Tensor) -> str:
    return "(" + ", ".join(str(s) for s in t.shape) + ")"


def _check_int(name: str, value: object, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{name} must be an integer >= {minimum}; got {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}; got {value}")


def check_inputs(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    attn_mask: torch.Tensor | None,
    *,
    causal: bool,
    window: int,
    sinks: int,
    stride: int,
    tail: int | None,
    scale: float | None,
    correction: str = "paper",
    retrieve: int = 0,
) -> AttentionShape:
    """Validate the arguments of ``delta_attention`` and return their sizes.

    Expected: q [B, Hq, Nq, D], k [B, Hkv, Nk, D], v [B, Hkv, Nk, Dv] with ``Hq % Hkv == 0``, all
    of one floating dtype and one device; ``attn_mask`` bool (True = may attend) or floating
    (additive), broadcastable to [B, Hq, Nq, Nk].
    """
    for name, t in (("q", q), ("k", k), ("v", v)):
        if not isinstance(t, torch.Tensor):
            raise ValueError(f"{name} must be a torch.Tensor; got {type(t).__name__}")
    names = {"q": "[B, Hq, N, D]", "k": "[B, Hkv, N, D]", "v": "[B, Hkv, N, Dv]"}
    for name, t in (("q", q), ("k", k), ("v", v)):
        if t.dim() != 4:
            raise ValueError(f"{name} must be a 4-D tensor {names[name]}; got shape {_shape(t)}")
    if not q.dtype.is_floating_point:
        raise ValueError(f"q must have a floating dtype; got {q.dtype}")
    for name, t in (("k", k), ("v", v)):
        if t.dtype != q.dtype:
            raise ValueError(f"{name} must have the dtype of q ({q.dtype}); got {t.dtype}")
        if t.device != q.device:
            raise ValueError(f"{name} must be on the device of q ({q.device}); got {t.device}")
    B, Hq, Nq, D = q.shape
    Bk, Hkv, Nk, Dk = k.shape
    Bv, Hv, Nv, Dv = v.shape
    if Bk != B or Bv != B:
        raise ValueError(f"k and v must have the batch size of q ({B}); got k {_shape(k)}, v {_shape(v)}")
    if Dk != D:
        raise ValueError(f"k must have the head dim of q (D={D}); got k {_shape(k)}")
    if Hv != Hkv:
        raise ValueError(f"v must have the kv heads of k (Hkv={Hkv}); got v {_shape(v)}")
    if Nv != Nk:
        raise ValueError(f"v must have the sequence length of k ({Nk}); got v {_shape(v)}")
    if Hkv == 0 or Hq % Hkv != 0:
        raise ValueError(
            f"the query heads of q must be a multiple of the kv heads of k (Hq % Hkv == 0); got Hq={Hq}, Hkv={Hkv}"
        )
    if attn_mask is not None:
        _check_mask(attn_mask, q, (B, Hq, Nq, Nk))
    if not isinstance(causal, bool):
        raise ValueError(f"causal must be a bool; got {causal!r}")
    _check_int("window", window, 1)
    _check_int("sinks", sinks, 0)
    _check_int("stride", stride, 1)
    if tail is not None:
        _check_int("tail", tail, 0)
    if scale is not None:
        if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not math.isfinite(scale):
            raise ValueError(f"scale must be a finite float or None (1/sqrt(D)); got {scale!r}")
    parse_corrections(correction, Hq)
    _check_int("retrieve", retrieve, 0)
    return AttentionShape(B, Hq, Hkv, Nq, Nk, D, Dv)


def _check_mask(mask: torch.Tensor, q: torch.Tensor, target: tuple[int, int, int, int]) -> None:
    expected = "[B, Hq, Nq, Nk] = [" + ", ".join(map(str, target)) + "]"
    if not isinstance(mask, torch.Tensor):
        raise ValueError(f"attn_mask must be a torch.Tensor or None; got {type(mask).__name__}")
    if mask.dtype != torch.bool and not mask.dtype.is_floating_point:
        raise ValueError(f"attn_mask must be bool (True = may attend) or floating (additive); got {mask.dtype}")
    if mask.device != q.device:
        raise ValueError(f"attn_mask must be on the device of q ({q.device}); got {mask.device}")
    if mask.dim() > 4:
        raise ValueError(f"attn_mask must be broadcastable to {expected}; got shape {_shape(mask)}")
    for size, want in zip(reversed(mask.shape), reversed(target)):
        if size != 1 and size != want:
            raise ValueError(f"attn_mask must be broadcastable to {expected}; got shape {_shape(mask)}")


def resolve_scale(scale: float | None, head_dim: int) -> float:
    """The softmax scale: ``scale``, or ``1/sqrt(D)`` when None."""
    return 1.0 / math.sqrt(head_dim) if scale is None else float(scale)


def resolve_tail(tail: int | None, stride: int) -> int:
    """The dense tail length: ``tail``, or the paper's ``max(128, stride)`` when None."""
    return default_tail(stride) if tail is None else tail


def num_corrected_rows(n: int, stride: int, tail: int) -> int:
    """``Np = max(0, floor((N - T) / G) * G)``: rows ``[0, Np)`` are sparse + delta, ``[Np, N)`` dense."""
    return max(0, (n - tail) // stride * stride)
