"""TensorRT's launch of the plugins, emulated on the CPU with the kernels in Triton's interpreter.

This is not TensorRT. It reproduces the contract a TensorRT ahead-of-time plugin launch follows,
using the plugin's own launch logic at concrete sizes:

- outputs allocated from the plugin's output shape expressions (filled with NaN, so a row no
  kernel writes -- or a scratch value read before it is written -- shows up), an aliased output
  being its input's buffer;
- the kernel's arguments in TensorRT's slot order -- input tensors, the extra int32 arguments,
  output tensors -- bound back to the kernel's parameters through the same ``order`` that
  reorders the compiled PTX (:meth:`KernelLayout.bind`);
- the grid from the plugin's grid expressions, one launch per plugin.

What it checks: the row split, grids, extra arguments, delta sizing, mask bias and scale inputs
and the dense -> sparse chaining compute Delta Attention. What it cannot check: TensorRT itself
and the reordered PTX (the GPU check, ``benchmarks/gpu_aot_check.py``, launches that).
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np
import torch
from onnx.reference.op_run import OpRun

from delta_opt.backends.tensorrt.aot import kernel_function, plan_stage
from delta_opt.backends.tensorrt.attributes import STAGE_ATTRIBUTES
from delta_opt.backends.tensorrt.stages import DENSE, SPARSE, Stage, StageAttributes, StageDims

__all__ = ["ONNX_OPS", "rules_input", "run_stage", "run_node"]


def run_stage(stage: Stage, tensors: Mapping[str, torch.Tensor], values: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """One plugin launch: ``tensors`` are its inputs by name, ``values`` its attributes."""
    dtype = tensors["q"].dtype
    dims = StageDims.from_shapes({name: tuple(tensors[name].shape) for name in ("q", "k", "v", "bias")})
    attrs = StageAttributes.from_values(values)
    fn = kernel_function(stage)
    build = plan_stage(stage, dims, attrs, dtype, fn.arg_names)
    outputs = {}
    for name, shape in build.outputs.items():
        if name in stage.aliases:
            outputs[name] = tensors[stage.aliases[name]]
        else:
            out_dtype = dtype if name == "out" else torch.float32
            outputs[name] = torch.full(shape, float("nan"), dtype=out_dtype)
    slots = [tensors[n] for n in stage.inputs] + list(build.layout.extra_values()) + [outputs[n] for n in stage.outputs]
    kwargs = build.layout.bind(slots)
    # The interpreter's 16-bit dot is wrong: cast its operands up, as the eager launcher does there.
    constants = {**build.layout.constants, "UPCAST": True}
    blocks = build.plan.blocks
    fn[build.grid](**kwargs, **constants, num_warps=blocks.num_warps, num_stages=blocks.num_stages)
    return outputs


def rules_input(values: Mapping[str, Any], q_heads: int) -> torch.Tensor:
    """The ``rules`` input the prepared graph feeds: the int32 rule code of every query head."""
    return torch.tensor(StageAttributes.from_values(values).rule_codes(q_heads), dtype=torch.int32)


def run_node(q, k, v, bias, scale, values: Mapping[str, Any]) -> torch.Tensor:
    """Both plugins of one node, chained as the prepared graph chains them."""
    inputs = dict(q=q, k=k, v=v, bias=bias, scale=scale, rules=rules_input(values, q.shape[1]))
    first = run_stage(DENSE, inputs, values)
    scratch = {name: first[name] for name in ("delta", "mean_key", "offset")}
    second = run_stage(SPARSE, {**inputs, **scratch, "partial": first["out"]}, values)
    return second["out"]


def _attributes(op: OpRun) -> dict[str, Any]:
    values = {}
    for name in STAGE_ATTRIBUTES:
        value = getattr(op, name, None)
        if value is not None:
            values[name] = value.decode() if isinstance(value, bytes) else value
    return values


def _torch(x: np.ndarray) -> torch.Tensor:
    return torch.tensor(np.ascontiguousarray(x))  # a copy: the evaluator's arrays may be read-only


class DeltaAttentionDense(OpRun):
    op_domain = "delta_opt"

    def _run(self, *arrays, **_attrs):  # type: ignore[override]
        inputs = {name: _torch(a) for name, a in zip(DENSE.inputs, arrays)}
        outputs = run_stage(DENSE, inputs, _attributes(self))
        return tuple(outputs[name].numpy() for name in DENSE.outputs)


class DeltaAttentionSparse(OpRun):
    op_domain = "delta_opt"

    def _run(self, *arrays, **_attrs):  # type: ignore[override]
        # ``out`` aliases ``partial``: written in place (into _torch's copy: the evaluator shares values).
        inputs = {name: _torch(a) for name, a in zip(SPARSE.inputs, arrays)}
        return (run_stage(SPARSE, inputs, _attributes(self))["out"].numpy(),)


ONNX_OPS = [DeltaAttentionDense, DeltaAttentionSparse]
