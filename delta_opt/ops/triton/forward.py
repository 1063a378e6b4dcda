"""Eager launcher of the Triton kernels: allocate, plan (:mod:`.launch`), launch twice.

Importing this module imports Triton and compiles nothing yet. Whether the kernels run compiled
or in the CPU interpreter is fixed when :mod:`.kernels` is imported (Triton reads
``TRITON_INTERPRET`` when it decorates them).
"""

from __future__ import annotations

from typing import Sequence

import torch

from ...plan import Correction
from ..checks import AttentionShape
from . import kernels
from .arguments import KernelBuffers, accumulator_dtype, constexprs, dense_kernel_args, sparse_kernel_args
from .launch import BlockConfig, KernelPlan, key_mask_bias, plan_launch

__all__ = ["INTERPRETED", "run_kernels"]

# Under TRITON_INTERPRET, Triton's decorator returns an InterpretedFunction, not a JITFunction.
INTERPRETED = type(kernels.delta_dense_kernel).__name__ == "InterpretedFunction"


def run_kernels(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    attn_mask: torch.Tensor | None,
    shape: AttentionShape,
    *,
    causal: bool,
    window: int,
    sinks: int,
    stride: int,
    tail: int,
    scale: float,
    corrections: Sequence[Correction],
    blocks: BlockConfig | None = None,
) -> torch.Tensor:
    """Delta Attention of validated, kernel-supported inputs (see :func:`.launch.unsupported_reason`).

    q [B, Hq, Nq, D], k [B, Hkv, Nk, D], v [B, Hkv, Nk, Dv], ``attn_mask`` None or a key mask
    broadcastable to [B, Hq, 1, Nk]; ``corrections`` one rule per query head. Returns
    [B, Hq, Nq, Dv] in the dtype of q. Scratch beyond the output: the [B, Hq, Np / G, Dv] anchor
    buffer, with a taylor head also [B, Hq, Np / G, D + 1] of mean keys and offsets, and with a
    mask an O(B * Hq * Nk) bias.
    """
    if q.device.type == "cpu" and not INTERPRETED:
        raise RuntimeError(
            "the Triton kernels were compiled for the GPU; CPU tensors need TRITON_INTERPRET=1 "
            "set before delta_opt's Triton kernels are first imported"
        )
    plan: KernelPlan = plan_launch(
        shape, q.dtype, causal=causal, window=window, sinks=sinks, stride=stride, tail=tail,
        scale=scale, corrections=corrections, interpret=INTERPRETED, blocks=blocks,
    )  # fmt: skip
    acc_dtype = accumulator_dtype(q.dtype)
    out = q.new_empty(plan.batch, plan.q_heads, plan.n_q, plan.value_dim)
    if out.numel() == 0:
        return out
    if plan.n_k == 0:
        return out.zero_()
    buffers = KernelBuffers(
        q=q, k=k, v=v, out=out,
        delta=torch.empty(plan.delta_shape, dtype=acc_dtype, device=q.device),
        scale=torch.tensor([plan.qk_scale_log2], dtype=acc_dtype, device=q.device),
        rules=torch.tensor(plan.rule_codes, dtype=torch.int32, device=q.device),
        bias=None if attn_mask is None else key_mask_bias(attn_mask, shape, acc_dtype),
        mean_key=torch.empty(plan.mean_key_shape, dtype=acc_dtype, device=q.device) if plan.has_taylor else None,
        offset=torch.empty(plan.offset_shape, dtype=acc_dtype, device=q.device) if plan.has_taylor else None,
    )  # fmt: skip
    options = dict(
        constexprs(plan, q.dtype, has_bias=attn_mask is not None, interpret=INTERPRETED),
        num_warps=plan.blocks.num_warps,
        num_stages=plan.blocks.num_stages,
    )
    kernels.delta_dense_kernel[plan.dense_grid](**dense_kernel_args(plan, buffers), **options)
    if plan.sparse_grid is not None:
        kernels.delta_sparse_kernel[plan.sparse_grid](**sparse_kernel_args(plan, buffers), **options)
    return out
