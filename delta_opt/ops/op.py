"""The one boundary: ``delta_opt::delta_attention``, declared once with ``torch.library``.

The FX pass inserts this op, ``torch.export`` keeps it as one node (thanks to the fake
implementation below), and the ONNX and TensorRT exporters lower it. In eager mode it runs the
implementation named by ``impl``: ``auto`` resolves by device (see :func:`resolve_impl`).
"""

from __future__ import annotations

import logging
from typing import Callable, Protocol, Sequence

import torch

from ..config import Impl
from ..plan import Correction, format_corrections
from .blocked import delta_attention_blocked
from .checks import check_inputs
from .reference import delta_attention_reference

__all__ = ["delta_attention", "register_impl", "resolve_impl", "OP_NAME"]

OP_NAME = "delta_opt::delta_attention"
logger = logging.getLogger(__name__)

_SCHEMA = (
    "(Tensor q, Tensor k, Tensor v, Tensor? attn_mask=None, *, bool causal, int window=2048, "
    "int sinks=1024, int stride=64, int? tail=None, float? scale=None, str correction=\"paper\", "
    "int retrieve=0, str impl=\"auto\") -> Tensor"
)


class Implementation(Protocol):
    def __call__(
        self,
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
        correction: str,
        retrieve: int,
    ) -> torch.Tensor: ...


# An implementation is registered with a predicate telling whether it can run on a device.
_IMPLS: dict[Impl, tuple[Callable[..., torch.Tensor], Callable[[torch.device], bool], str]] = {
    Impl.REFERENCE: (delta_attention_reference, lambda device: True, ""),
    Impl.BLOCKED: (delta_attention_blocked, lambda device: True, ""),
}


def register_impl(
    impl: Impl, fn: Implementation, available: Callable[[torch.device], bool], requirement: str
) -> None:
    """Make ``fn`` the implementation behind ``impl``; ``available(device)`` says where it runs and
    ``requirement`` says what it needs when it cannot (shown in the error)."""
    _IMPLS[impl] = (fn, available, requirement)


def resolve_impl(impl: Impl | str, device: torch.device) -> Impl:
    """The implementation that runs for ``impl`` on ``device``.

    ``auto`` picks Triton on CUDA when it is registered and available, else ``blocked``. An
    explicit choice that cannot run on the device raises ``ValueError`` saying what it needs.
    """
    impl = Impl.parse(impl)
    if impl is Impl.AUTO:
        triton = _IMPLS.get(Impl.TRITON)
        if device.type == "cuda" and triton is not None and triton[1](device):
            return Impl.TRITON
        return Impl.BLOCKED
    if impl not in _IMPLS:
        raise ValueError(f"impl={impl.value!r} is not available: {_missing_reason(impl)}")
    _, available, requirement = _IMPLS[impl]
    if not available(device):
        raise ValueError(f"impl={impl.value!r} cannot run on device {device}: {requirement}")
    return impl


def _missing_reason(impl: Impl) -> str:
    if impl is Impl.TRITON:
        return "the Triton kernels need `pip install triton` (the `gpu` extra) and a CUDA device"
    return "no implementation is registered"


@torch.library.custom_op(OP_NAME, mutates_args=(), schema=_SCHEMA)
def _delta_attention_op(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    attn_mask: torch.Tensor | None = None,
    *,
    causal: bool,
    window: int = 2048,
    sinks: int = 1024,
    stride: int = 64,
    tail: int | None = None,
    scale: float | None = None,
    correction: str = "paper",
    retrieve: int = 0,
    impl: str = "auto",
) -> torch.Tensor:
    chosen = resolve_impl(impl, q.device)
    fn = _IMPLS[chosen][0]
    return fn(
        q, k, v, attn_mask, causal=causal, window=window, sinks=sinks, stride=stride, tail=tail, scale=scale,
        correction=correction, retrieve=retrieve,
    )


@_delta_attention_op.register_fake
def _delta_attention_fake(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    attn_mask: torch.Tensor | None = None,
    *,
    causal: bool,
    window: int = 2048,
    sinks: int = 1024,
    stride: int = 64,
    tail: int | None = None,
    scale: float | None = None,
    correction: str = "paper",
    retrieve: int = 0,
    impl: str = "auto",
) -> torch.Tensor:
    # Validate while tracing too, so a bad site fails at export time, not at run time.
    check_inputs(
        q, k, v, attn_mask, causal=causal, window=window, sinks=sinks, stride=stride, tail=tail, scale=scale,
        correction=correction, retrieve=retrieve,
    )
    Impl.parse(impl)
    return q.new_empty(q.shape[0], q.shape[1], q.shape[2], v.shape[3])


def delta_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    attn_mask: torch.Tensor | None = None,
    *,
    causal: bool,
    window: int = 2048,
    sinks: int = 1024,
    stride: int = 64,
    tail: int | None = None,
    scale: float | None = None,
    correction: Correction | str | Sequence[Correction | str] = Correction.PAPER,
    retrieve: int = 0,
    impl: Impl | str = Impl.AUTO,
) -> torch.Tensor:
    """Delta Attention (DESIGN §1): sliding window + sinks, corrected on every G-th row.

    Args:
        q: queries [B, Hq, Nq, D].
        k: keys [B, Hkv, Nk, D]; ``Hq % Hkv == 0`` and query head h reads kv head ``h // (Hq // Hkv)``.
        v: values [B, Hkv, Nk, Dv].
        attn_mask: None, bool (True = may attend) or additive float, broadcastable to [B, Hq, Nq, Nk].
        causal: whether query i may only see keys j <= i (bottom-right aligned when Nq != Nk).
        window: W >= 1, keys with |i - j| < W are in the window.
        sinks: S >= 0, keys j < S are always visible.
        stride: G >= 1, every G-th row is an anchor computed densely.
        tail: T >= 0 final rows computed densely; None means ``max(128, stride)``.
        scale: softmax scale; None means ``1/sqrt(D)``.
        correction: how rows before the dense tail are corrected (:class:`~delta_opt.Correction`):
            ``"paper"`` (DESIGN §1, the default), ``"none"`` or ``"taylor"`` (see
            :mod:`delta_opt.plan`) — one rule, or one per query head (a sequence, or a
            comma-separated string).
        retrieve: K >= 0; each anchor's K highest-scoring long-range keys join the sparse set
            of the rows it corrects (see :mod:`delta_opt.plan`).
        impl: ``"auto"``, ``"reference"``, ``"blocked"`` or ``"triton"``.

    Returns:
        [B, Hq, Nq, Dv], dtype of q. When Nq != Nk (decode steps) the result is dense attention.
    """
    if not isinstance(correction, str):
        correction = format_corrections(correction)
    elif isinstance(correction, Correction):
        correction = correction.value
    check_inputs(
        q, k, v, attn_mask, causal=causal, window=window, sinks=sinks, stride=stride, tail=tail, scale=scale,
        correction=correction, retrieve=retrieve,
    )
    impl = Impl.parse(impl)
    return torch.ops.delta_opt.delta_attention(
        q,
        k,
        v,
        attn_mask,
        causal=causal,
        window=window,
        sinks=sinks,
        stride=stride,
        tail=tail,
        scale=None if scale is None else float(scale),
        correction=correction,
        retrieve=retrieve,
        impl=impl.value,
    )
