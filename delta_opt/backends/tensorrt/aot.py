"""Ahead-of-time builds of a stage's kernel: the PTX a TensorRT plugin embeds, and its launch.

:func:`plan_stage` is plain Python (sizes may be symbolic): the plan, the kernel's arguments from
the eager launcher's own builders, the TensorRT parameter layout and the grid.
:func:`compile_stage` compiles that variant with Triton for a GPU architecture -- on any machine,
Triton ships its own LLVM and ``ptxas`` -- checks that TensorRT can launch it, and reorders its
PTX parameters into TensorRT's order. :func:`assemble` turns PTX into a cubin with Triton's
``ptxas`` (what the CUDA driver does when it loads the PTX).
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import re
import subprocess
import tempfile
from dataclasses import dataclass
from typing import Any

import torch

from ...ops.triton.arguments import constexprs, dense_kernel_args, sparse_kernel_args
from ...ops.triton.launch import KernelPlan
from .ptx import entry_params, reorder_entry
from .signature import KernelLayout, kernel_layout
from .stages import DENSE, Stage, StageAttributes, StageDims, grid, kernel_buffers, output_shapes, symbolic_plan
from .symbolic import SymInt

__all__ = ["StageArtifact", "StageBuild", "assemble", "compile_stage", "driver_ptx_version", "kernel_function", "plan_stage"]


def kernel_function(stage: Stage) -> Any:
    """The ``@triton.jit`` kernel of a stage (imports Triton)."""
    from ...ops.triton import kernels

    return getattr(kernels, stage.kernel)


@dataclass(frozen=True)
class StageBuild:
    """Everything about one stage's launch that does not need a compiler."""

    stage: Stage
    dtype: torch.dtype
    dims: StageDims
    attrs: StageAttributes
    plan: KernelPlan
    layout: KernelLayout
    grid: tuple[SymInt, SymInt, SymInt]
    outputs: dict[str, tuple[SymInt, ...]]

    @property
    def num_warps(self) -> int:
        return self.plan.blocks.num_warps

    def key(self) -> tuple:
        """What the compiled code depends on (not the symbolic sizes): one compile per key."""
        return (self.stage.name, str(self.dtype), self.layout.compile_signature().__repr__(), self.num_warps, self.plan.blocks)


def plan_stage(
    stage: Stage, dims: StageDims, attrs: StageAttributes, dtype: torch.dtype, arg_names: list[str] | tuple[str, ...]
) -> StageBuild:
    """The launch of ``stage`` for sizes ``dims`` (ints or symbolic) and attributes ``attrs``.

    ``arg_names`` is the kernel's parameter list (``kernel_function(stage).arg_names``).
    """
    if dtype not in (torch.float16, torch.bfloat16, torch.float32):
        raise ValueError(f"dtype must be float16, bfloat16 or float32; got {dtype}")
    plan = symbolic_plan(dims, attrs, dtype)
    buffers = kernel_buffers(dims, attrs, dtype)
    args = dense_kernel_args(plan, buffers) if stage is DENSE else sparse_kernel_args(plan, buffers)
    compile_time = constexprs(plan, dtype, has_bias=attrs.has_bias, interpret=False)
    layout = kernel_layout(stage, list(arg_names), args, compile_time)
    return StageBuild(stage, dtype, dims, attrs, plan, layout, grid(stage, plan), output_shapes(stage, dims, attrs))


@dataclass(frozen=True)
class StageArtifact:
    """A compiled stage: the PTX TensorRT embeds (parameters in TensorRT's order) and its launch."""

    build: StageBuild
    arch: int
    kernel_name: str  # the entry symbol of ``ptx``
    ptx: str
    shared_mem: int  # dynamic shared memory per block, bytes
    num_warps: int
    hidden_params: int  # Triton's trailing scratch pointers, passed as null
    compiled: Any  # Triton's CompiledKernel (its cubin and metadata), for inspection

    @property
    def block(self) -> tuple[int, int, int]:
        return (self.num_warps * 32, 1, 1)

    def metadata(self) -> dict[str, Any]:
        meta = self.compiled.metadata
        return {
            "kernel": self.kernel_name, "arch": self.arch, "num_warps": self.num_warps,
            "num_stages": meta.num_stages, "shared_mem": self.shared_mem, "hidden_params": self.hidden_params,
            "ptx_params": len(entry_params(self.ptx, self.kernel_name)),
        }  # fmt: skip


def _check_launchable(meta: Any) -> None:
    """Refuse launch features a TensorRT plugin launch cannot reproduce (it passes null for the
    hidden scratch pointers and makes an ordinary, non-clustered launch)."""
    problems = []
    for field in ("global_scratch_size", "profile_scratch_size", "tmem_size"):
        if getattr(meta, field, 0):
            problems.append(f"{field}={getattr(meta, field)}")
    if getattr(meta, "num_ctas", 1) != 1:
        problems.append(f"num_ctas={meta.num_ctas}")
    for flag in ("launch_cooperative_grid", "launch_pdl"):
        if getattr(meta, flag, False):
            problems.append(f"{flag}=True")
    if getattr(meta, "tensordesc_meta", None):
        problems.append("tensor descriptors")
    if problems:
        raise RuntimeError(f"{meta.name} needs {', '.join(problems)}, which a TensorRT plugin launch cannot provide")


def compile_stage(build: StageBuild, arch: int, *, ptx_version: int | None = None) -> StageArtifact:
    """Compile ``build``'s kernel variant for sm_``arch`` and lay out its PTX for TensorRT.

    ``ptx_version`` caps the PTX ISA (e.g. :func:`driver_ptx_version`; None: Triton's default).
    Builds that differ only in symbolic sizes share one compile. The kernels must have been
    imported with ``TRITON_INTERPRET`` unset.
    """
    key = (build.key(), arch, ptx_version)
    artifact = _COMPILED.get(key)
    if artifact is None:
        artifact = _COMPILED[key] = _compile(build, arch, ptx_version)
    return artifact if artifact.build is build else dataclasses.replace(artifact, build=build)


_COMPILED: dict[tuple, StageArtifact] = {}


def _compile(build: StageBuild, arch: int, ptx_version: int | None) -> StageArtifact:
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    fn = kernel_function(build.stage)
    if type(fn).__name__ == "InterpretedFunction":
        raise RuntimeError("compiling the kernels needs them imported with TRITON_INTERPRET unset")
    signature, consts, attrs = build.layout.compile_signature()
    options: dict[str, Any] = dict(num_warps=build.num_warps, num_stages=build.plan.blocks.num_stages)
    if ptx_version is not None:
        options["ptx_version"] = ptx_version
    compiled = triton.compile(ASTSource(fn, signature, consts, attrs), target=GPUTarget("cuda", arch, 32), options=options)
    meta = compiled.metadata
    _check_launchable(meta)
    ptx = compiled.asm["ptx"]
    params = entry_params(ptx, meta.name)
    visible = len(build.layout.params)
    hidden = len(params) - visible
    if not 0 <= hidden <= 2:
        raise RuntimeError(f"{meta.name}: {len(params)} PTX parameters for {visible} declared ones")
    for param, declared in zip(params, build.layout.params):
        if param.is_pointer != declared.is_pointer or param.size != (8 if declared.is_pointer else 4):
            raise RuntimeError(f"{meta.name}: PTX parameter {param.declaration!r} does not match {declared.name} ({declared.kind})")
    # A symbol per compiled variant: an engine may hold several variants of the same kernel.
    name = f"{meta.name}_{hashlib.sha256(ptx.encode()).hexdigest()[:12]}"
    laid_out = reorder_entry(ptx, meta.name, build.layout.order, visible=visible, new_name=name)
    return StageArtifact(build, arch, name, laid_out, int(meta.shared), int(meta.num_warps), hidden, compiled)


def _ptxas(arch: int) -> Any:
    """Triton's ``ptxas`` for an architecture (Triton >= 3.5 picks one per architecture)."""
    from triton.backends.nvidia.compiler import get_ptxas

    try:
        return get_ptxas(arch)
    except TypeError:  # Triton < 3.5: one ptxas for every architecture
        return get_ptxas()


def driver_ptx_version(arch: int) -> int | None:
    """The PTX ISA to emit so that this machine's CUDA driver can load it: the lower of what the
    driver accepts and what Triton's ``ptxas`` for ``arch`` emits (None without a CUDA driver).

    TensorRT hands the plugin's PTX to the driver, which rejects an ISA newer than itself; Triton
    otherwise emits the ISA of the ``ptxas`` it bundles, which can be newer than the driver.
    """
    import ctypes

    try:
        libcuda = ctypes.CDLL("libcuda.so.1")
    except OSError:
        return None
    version = ctypes.c_int()
    if libcuda.cuDriverGetVersion(ctypes.byref(version)) != 0:
        return None
    from triton.backends.nvidia.compiler import ptx_get_version

    driver = ptx_get_version(f"{version.value // 1000}.{(version.value % 1000) // 10}")
    try:
        return min(driver, ptx_get_version(_ptxas(arch).version))
    except Exception:  # noqa: BLE001 - Triton internals moved: cap at the driver's
        return driver


def assemble(ptx: str, arch: int) -> bytes:
    """A cubin of ``ptx`` for sm_``arch``, assembled with the ``ptxas`` Triton bundles.

    Hopper kernels from Triton target ``sm_90a``; the PTX's own ``.target`` line decides.
    """
    target = re.search(r"^\s*\.target\s+(sm_\w+)", ptx, re.M)
    gpu = target.group(1) if target else f"sm_{arch}"
    with tempfile.TemporaryDirectory() as tmp:
        src, out = os.path.join(tmp, "k.ptx"), os.path.join(tmp, "k.cubin")
        with open(src, "w") as f:
            f.write(ptx)
        result = subprocess.run(
            [getattr(_ptxas(arch), "path", None) or str(_ptxas(arch)), f"--gpu-name={gpu}", src, "-o", out], capture_output=True, text=True, check=False
        )
        if result.returncode != 0:
            raise RuntimeError(f"ptxas rejected the PTX: {result.stderr.strip()[-2000:]}")
        with open(out, "rb") as f:
            return f.read()
