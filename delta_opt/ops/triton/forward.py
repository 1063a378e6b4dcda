"""Eager launcher of the Triton kernels: allocate, plan (:mod:`.launch`), launch twice.

Importing this module imports Triton and compiles nothing yet. Whether the kernels run compiled
or in the CPU interpreter is fixed when :mod:`.kernels` is imported (Triton reads
``TRITON_INTERPRET`` when it decorates them).
"""

from __future__ import annotations

import torch

from ..checks import AttentionShape
from . import kernels
from .launch import BlockConfig, KernelPlan, key_mask_bias, plan_launch, strides

__all__ = ["INTERPRETED", "run_kernels"]

# Under TRITON_INTERPRET, Triton's decorator returns an InterpretedFunction, not a JITFunction.
INTERPRETED = type(kernels.delta_dense_kernel).__name__ == "InterpretedFunction"


def _accumulator_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def _precision(dtype: torch.dtype) -> str:
    # fp32 inputs get exact fp32 products (not TF32) so that they meet fp32 tolerances; the
    # option is ignored for 16-bit inputs.
    return "ieee" if dtype in (torch.float32, torch.float64) else "tf32"


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
    blocks: BlockConfig | None = None,
) -> torch.Tensor:
    """Delta Attention of validated, kernel-supported inputs (see :func:`.launch.unsupported_reason`).

    q [B, Hq, Nq, D], k [B, Hkv, Nk, D], v [B, Hkv, Nk, Dv], ``attn_mask`` None or a key mask
    broadcastable to [B, Hq, 1, Nk]. Returns [B, Hq, Nq, Dv] in the dtype of q. Scratch beyond
    the output: the [B, Hq, Np / G, Dv] anchor corrections and, with a mask, an O(B * Hq * Nk) bias.
    """
    if q.device.type == "cpu" and not INTERPRETED:
        raise RuntimeError(
            "the Triton kernels were compiled for the GPU; CPU tensors need TRITON_INTERPRET=1 "
            "set before delta_opt's Triton kernels are first imported"
        )
    plan: KernelPlan = plan_launch(
        shape, q.dtype, causal=causal, window=window, sinks=sinks, stride=stride, tail=tail,
        scale=scale, interpret=INTERPRETED, blocks=blocks,
    )  # fmt: skip
    acc_dtype = _accumulator_dtype(q.dtype)
    out = q.new_empty(plan.batch, plan.q_heads, plan.n_q, plan.value_dim)
    if out.numel() == 0:
        return out
    if plan.n_k == 0:
        return out.zero_()
    delta = torch.empty(plan.delta_shape, dtype=acc_dtype, device=q.device)
    scale_t = torch.tensor([plan.qk_scale_log2], dtype=acc_dtype, device=q.device)
    if attn_mask is None:
        bias, bias_strides = scale_t, (0, 0)  # never read: HAS_BIAS is False
    else:
        bias = key_mask_bias(attn_mask, shape, acc_dtype)
        bias_strides = bias.stride()[:2]
    tensor_strides = (*strides(q), *strides(k), *strides(v), *out.stride(), *_delta_strides(delta))
    common = dict(
        CAUSAL=causal,
        HAS_BIAS=attn_mask is not None,
        UPCAST=INTERPRETED,  # the interpreter's bf16 dot is wrong: compute dots in fp32 there
        PRECISION=_precision(q.dtype),
        BLOCK_M=plan.blocks.block_m,
        BLOCK_N=plan.blocks.block_n,
        BLOCK_D=plan.block_d,
        BLOCK_DV=plan.block_dv,
        num_warps=plan.blocks.num_warps,
        num_stages=plan.blocks.num_stages,
    )
    kernels.delta_dense_kernel[plan.dense_grid](
        q, k, v, out, delta, bias, scale_t, *tensor_strides, *bias_strides,
        plan.q_heads, plan.group, plan.n_q, plan.n_k, plan.n_dense_rows, plan.n_anchors,
        plan.n_corrected, max(1, plan.stride), plan.causal_offset, plan.head_dim, plan.value_dim,
        plan.window, plan.sinks, **common,
    )  # fmt: skip
    if plan.sparse_grid is not None:
        kernels.delta_sparse_kernel[plan.sparse_grid](
            q, k, v, out, delta, bias, scale_t, *tensor_strides, *bias_strides, plan.q_heads, plan.group, plan.n_k, plan.n_corrected, plan.stride,
            plan.head_dim, plan.value_dim, plan.window, plan.sinks, **common,
        )  # fmt: skip
    return out


def _delta_strides(delta: torch.Tensor) -> tuple[int, ...]:
    # An empty buffer (no anchors) still needs four strides; its pointer is never dereferenced.
    return delta.stride() if delta.dim() == 4 else (0, 0, 0, 0)
