"""Compile the kernels for a GPU architecture on any machine, as the JIT would for one call.

Triton ships its own LLVM and ``ptxas``, so a cubin for sm_80/89/90 can be built without a GPU:
the arguments of one call are made of ``meta`` tensors, passed through the launcher's own
argument builders (:mod:`.arguments`), specialised the way the JIT does (unit values and 16-byte
alignment), and compiled. The test-suite uses this to check the compiled (not interpreted) path
on CPU-only CI; an ahead-of-time build can start from it.

The kernels must have been imported with ``TRITON_INTERPRET`` unset.
"""

from __future__ import annotations

import os
import re
import subprocess
import tempfile
from typing import Any

from typing import Sequence

import torch

from ...plan import Correction
from ..checks import AttentionShape, resolve_tail
from .arguments import (
    KernelBuffers,
    accumulator_dtype,
    compile_signature,
    constexprs,
    dense_kernel_args,
    sparse_kernel_args,
)
from .launch import BlockConfig, plan_launch

__all__ = ["compile_kernels", "resource_usage"]


def compile_kernels(
    shape: AttentionShape,
    dtype: torch.dtype,
    *,
    causal: bool,
    window: int,
    sinks: int,
    stride: int,
    tail: int | None = None,
    has_mask: bool = False,
    corrections: Sequence[Correction | str] | None = None,
    arch: int = 90,
    blocks: BlockConfig | None = None,
) -> dict[str, Any]:
    """``{"dense": CompiledKernel, "sparse": CompiledKernel}`` for sm_``arch`` (sparse absent when
    the call is all dense). ``kernel.asm["cubin"]`` holds the binary, ``["ptx"]`` the PTX.

    ``corrections`` is one rule per query head (None: ``paper``); a plan with a ``taylor`` head
    compiles the variant with the long-range sweep and the mixing epilogue."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from . import kernels

    if type(kernels.delta_dense_kernel).__name__ == "InterpretedFunction":
        raise RuntimeError("cross-compiling needs the kernels imported with TRITON_INTERPRET unset")
    plan = plan_launch(
        shape, dtype, causal=causal, window=window, sinks=sinks, stride=stride,
        tail=resolve_tail(tail, stride), scale=shape.head_dim**-0.5, blocks=blocks,
        corrections=None if corrections is None else [Correction.parse(c) for c in corrections],
    )  # fmt: skip
    acc = accumulator_dtype(dtype)

    def meta(*size: int, dt: torch.dtype = dtype) -> torch.Tensor:
        return torch.empty(size, dtype=dt, device="meta")

    b, hq, hkv, n_q, n_k = shape.batch, shape.q_heads, shape.kv_heads, shape.q_len, shape.kv_len
    buffers = KernelBuffers(
        q=meta(b, hq, n_q, shape.head_dim),
        k=meta(b, hkv, n_k, shape.head_dim),
        v=meta(b, hkv, n_k, shape.value_dim),
        out=meta(b, hq, n_q, shape.value_dim),
        delta=meta(*plan.delta_shape, dt=acc),
        scale=meta(1, dt=acc),
        rules=meta(hq, dt=torch.int32),
        bias=meta(b, 1, n_k, dt=acc).expand(b, hq, n_k) if has_mask else None,  # a key-padding mask
        mean_key=meta(*plan.mean_key_shape, dt=acc) if plan.has_taylor else None,
        offset=meta(*plan.offset_shape, dt=acc) if plan.has_taylor else None,
    )
    compile_time = constexprs(plan, dtype, has_bias=has_mask, interpret=False)
    options = dict(num_warps=plan.blocks.num_warps, num_stages=plan.blocks.num_stages)
    target = GPUTarget("cuda", arch, 32)
    launches = [("dense", kernels.delta_dense_kernel, dense_kernel_args(plan, buffers))]
    if plan.sparse_grid is not None:
        launches.append(("sparse", kernels.delta_sparse_kernel, sparse_kernel_args(plan, buffers)))
    compiled = {}
    for name, fn, args in launches:
        signature, consts, attrs = compile_signature(fn.arg_names, args, compile_time)
        compiled[name] = triton.compile(ASTSource(fn, signature, consts, attrs), target=target, options=options)
    return compiled


def resource_usage(cubin: bytes) -> dict[str, int] | None:
    """Registers, spill stack and static shared memory of a cubin, read with Triton's bundled
    ``cuobjdump``; None where it is not shipped."""
    import triton

    tool = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")
    if not os.path.exists(tool):
        return None
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        text = subprocess.run([tool, "--dump-resource-usage", f.name], capture_output=True, text=True, check=True).stdout
    fields = dict(re.findall(r"(REG|STACK|SHARED|LOCAL):(\d+)", text))
    return {name.lower(): int(value) for name, value in fields.items()}
