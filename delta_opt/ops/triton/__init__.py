"""The Triton implementation of ``delta_opt::delta_attention`` (``impl="triton"``).

This module is light: it never imports Triton itself. :func:`triton_available` says where the
kernels can run (a CUDA device of compute capability 8.0 or newer with Triton installed, or CPU
tensors under ``TRITON_INTERPRET=1``), and :func:`delta_attention_triton` imports the kernels
on its first call. Inputs the kernels do not take (a mask that varies per query row, head dims
over 256, float64 on a GPU, ...) run on ``blocked`` instead, and the reason is logged once.

- :mod:`.launch` — grids, tiles, row split, support checks: plain Python, shared with AOT builds;
- :mod:`.arguments` — the kernels' argument lists and their JIT specialisation, from a plan;
- :mod:`.kernels` — the ``@triton.jit`` kernels;
- :mod:`.forward` — the eager launcher;
- :mod:`.cross_compile` — cubins for a GPU architecture, built on any machine.
"""

from __future__ import annotations

import importlib.util
import logging
import os

import torch

from ...config import Impl
from ...plan import parse_corrections
from ..blocked import delta_attention_blocked
from ..checks import check_inputs, resolve_scale, resolve_tail
from .launch import BlockConfig, unsupported_reason

__all__ = ["REQUIREMENT", "delta_attention_triton", "interpreter_enabled", "register", "triton_available"]

logger = logging.getLogger(__name__)

REQUIREMENT = (
    "the Triton kernels need `pip install triton` (the `gpu` extra) and a CUDA device of compute "
    "capability >= 8.0, or TRITON_INTERPRET=1 to run them on CPU tensors in Triton's interpreter"
)
_logged_fallbacks: set[str] = set()


def interpreter_enabled() -> bool:
    """Whether ``TRITON_INTERPRET`` asks for Triton's CPU interpreter (read as Triton reads it)."""
    return os.environ.get("TRITON_INTERPRET", "0").strip().lower() in ("1", "true", "on", "yes", "y")


def triton_available(device: torch.device) -> bool:
    """Whether the kernels can run on tensors of ``device``."""
    if importlib.util.find_spec("triton") is None:
        return False
    if device.type == "cuda":
        return torch.cuda.is_available() and torch.cuda.get_device_capability(device) >= (8, 0)
    return device.type == "cpu" and interpreter_enabled()


def _log_fallback_once(reason: str) -> None:
    if reason not in _logged_fallbacks:
        _logged_fallbacks.add(reason)
        logger.warning("delta_attention impl='triton' runs on 'blocked' instead: %s", reason)


def delta_attention_triton(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    attn_mask: torch.Tensor | None = None,
    *,
    causal: bool,
    window: int,
    sinks: int,
    stride: int,
    tail: int | None = None,
    scale: float | None = None,
    correction: str = "paper",
    retrieve: int = 0,
    blocks: BlockConfig | None = None,
) -> torch.Tensor:
    """Delta Attention (DESIGN §1) with the fused Triton kernels.

    Args:
        q: [B, Hq, Nq, D]; k: [B, Hkv, Nk, D]; v: [B, Hkv, Nk, Dv]; ``Hq % Hkv == 0``.
        attn_mask: None, or a key mask (bool, True = may attend, or additive float)
            broadcastable to [B, Hq, 1, Nk]; other masks run on ``blocked`` (logged once).
        causal, window, sinks, stride, tail, scale: as in ``delta_attention_reference``.
        correction: "paper", "none" or "taylor", or a comma-separated list, one per query head;
            every rule runs in the kernels (each head reads its rule from a small int32 tensor).
        blocks: tile sizes (default :func:`.launch.block_config`); tests use it to vary tiling.

    Returns:
        [B, Hq, Nq, Dv] in the dtype of q, computed with fp32 accumulation (fp64 for fp64).
    """
    shape = check_inputs(
        q, k, v, attn_mask, causal=causal, window=window, sinks=sinks, stride=stride, tail=tail, scale=scale,
        correction=correction, retrieve=retrieve,
    )
    params = dict(causal=causal, window=window, sinks=sinks, stride=stride, tail=resolve_tail(tail, stride))
    reason = unsupported_reason(q, k, v, attn_mask, interpret=q.device.type == "cpu" or interpreter_enabled())
    if reason is None and retrieve > 0:
        reason = "retrieve > 0: the kernels do not pick long-range keys yet"
    if reason is not None:
        _log_fallback_once(reason)
        return delta_attention_blocked(
            q, k, v, attn_mask, **params, scale=scale, correction=correction, retrieve=retrieve
        )
    from .forward import run_kernels  # imports Triton and the kernels on first use

    return run_kernels(
        q, k, v, attn_mask, shape, **params, scale=resolve_scale(scale, shape.head_dim),
        corrections=parse_corrections(correction, shape.q_heads), blocks=blocks,
    )  # fmt: skip


def register() -> None:
    """Make these kernels the ``impl="triton"`` implementation (and ``auto``'s choice on CUDA)."""
    from ..op import register_impl

    register_impl(Impl.TRITON, delta_attention_triton, triton_available, REQUIREMENT)
