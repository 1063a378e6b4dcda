"""``delta_opt.optimize``: trace a model, convert its attention, return the program and a report."""

from __future__ import annotations

import copy
from typing import Any, Callable, Mapping

import torch
from torch.export import ExportedProgram
from torch.export.graph_signature import ExportGraphSignature, OutputSpec, TensorArgument
from torch.fx import GraphModule

from ..config import DeltaConfig
from .core.graph import GraphContext
from .report import Report
from .sdpa import convert_sdpa
from .softmax_chain import convert_softmax_attention

__all__ = ["PASSES", "optimize"]

Pass = Callable[..., Report]

# In order: SDPA calls first (one node each), then the softmax chains left in the graph.
PASSES: tuple[Pass, ...] = (convert_sdpa, convert_softmax_attention)


def optimize(
    model: torch.nn.Module | ExportedProgram,
    example_inputs: Any = None,
    config: DeltaConfig | None = None,
    *,
    dynamic_shapes: Any = None,
) -> tuple[ExportedProgram, Report]:
    """Convert the attention of ``model`` to ``delta_opt::delta_attention``.

    Args:
        model: an ``nn.Module`` (traced here with ``torch.export.export(..., strict=False)``; an
            ``fx.GraphModule`` from ``symbolic_trace`` is an ``nn.Module`` too), or an
            ``ExportedProgram`` (as exported or after ``run_decompositions()``; it is not modified).
        example_inputs: what to trace with: a tuple of positional arguments, a dict of keyword
            arguments (e.g. ``{"input_ids": ids, "use_cache": False}`` for transformers models),
            or a single tensor. Not needed for an ``ExportedProgram``.
        config: the Delta Attention parameters and which layers stay dense (default ``DeltaConfig()``).
        dynamic_shapes: passed to ``torch.export.export`` (e.g. ``{"input_ids": {1: Dim("n")}}``).

    Returns:
        ``(program, report)``: the converted ``ExportedProgram`` and a :class:`Report` listing every
        attention site, converted or not, and every softmax that was not taken for attention.
    """
    if config is None:
        config = DeltaConfig()
    if not isinstance(config, DeltaConfig):
        raise ValueError(f"config must be a DeltaConfig or None; got {type(config).__name__}")
    if isinstance(model, ExportedProgram):
        if dynamic_shapes is not None:
            raise ValueError("dynamic_shapes applies when tracing; model is already an ExportedProgram")
        ep, gm, source = model, copy.deepcopy(model.graph_module), "ExportedProgram"
    elif isinstance(model, torch.nn.Module):
        ep = _export(model, example_inputs, dynamic_shapes)
        gm = ep.graph_module
        kind = "GraphModule" if isinstance(model, GraphModule) else type(model).__name__
        source = f"torch.export (non-strict) of {kind}"
    else:
        raise ValueError(f"model must be a torch.nn.Module or a torch.export.ExportedProgram; got {type(model).__name__}")

    # Dead code from tracing (e.g. attention weights averaged for a caller that drops them)
    # would otherwise count as a use of the weights.
    gm.graph.eliminate_dead_code()
    report = Report(config=config.to_dict(), source=source)
    for run_pass in PASSES:
        report.extend(run_pass(gm, config, context=GraphContext.from_exported(ep, gm)))
    return _rebuild(ep, gm), report


def _export(model: torch.nn.Module, example_inputs: Any, dynamic_shapes: Any) -> ExportedProgram:
    if example_inputs is None:
        raise ValueError("example_inputs is required to trace an nn.Module (a tuple, a dict of kwargs, or a tensor)")
    if isinstance(example_inputs, torch.Tensor):
        args, kwargs = (example_inputs,), {}
    elif isinstance(example_inputs, Mapping):
        args, kwargs = (), dict(example_inputs)
    elif isinstance(example_inputs, (tuple, list)):
        args, kwargs = tuple(example_inputs), {}
    else:
        raise ValueError(
            f"example_inputs must be a tuple of arguments, a dict of keyword arguments or a tensor; "
            f"got {type(example_inputs).__name__}"
        )
    try:
        return torch.export.export(model, args, kwargs, dynamic_shapes=dynamic_shapes, strict=False)
    except Exception as e:
        hint = ""
        if "cache" in str(e).lower():
            hint = " (for transformers models pass use_cache=False in example_inputs)"
        raise RuntimeError(f"torch.export could not trace {type(model).__name__}{hint}: {e}") from e


def _rebuild(ep: ExportedProgram, gm: GraphModule) -> ExportedProgram:
    """A new program around the rewritten graph; output specs follow renamed output nodes."""
    output = next(n for n in reversed(gm.graph.nodes) if n.op == "output")
    specs = []
    for spec, value in zip(ep.graph_signature.output_specs, output.args[0]):
        if isinstance(spec.arg, TensorArgument) and isinstance(value, torch.fx.Node):
            spec = OutputSpec(spec.kind, TensorArgument(value.name), spec.target)
        specs.append(spec)
    signature = ExportGraphSignature(input_specs=list(ep.graph_signature.input_specs), output_specs=specs)
    return ExportedProgram(
        root=gm,
        graph=gm.graph,
        graph_signature=signature,
        state_dict=ep.state_dict,
        range_constraints=copy.deepcopy(ep.range_constraints),
        module_call_graph=copy.deepcopy(ep.module_call_graph),
        example_inputs=ep.example_inputs,
        constants=ep.constants,
        verifiers=ep.verifiers,
    )
