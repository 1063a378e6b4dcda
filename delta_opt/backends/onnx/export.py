"""``export_onnx``: a PyTorch model or ExportedProgram to an ONNX file with DeltaAttention nodes.

Every ``delta_opt::delta_attention`` call becomes one ``delta_opt.DeltaAttention`` node (see
:mod:`.schema`) and the model carries the node's function body (:mod:`.body`), so ONNX Runtime
runs it with no custom library and TensorRT can swap in a plugin of the same name. The rest of the
model goes through the torch.onnx dynamo exporter unchanged.
"""

from __future__ import annotations

import contextlib
import io
import logging
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import onnx
import onnx.inliner
import torch

from ...bench.io import atomic_write_bytes
from ...config import DeltaConfig
from .body import build_function
from .schema import DOMAIN, OP_TYPE, VERSION
from .translation import ExportError, Translation

__all__ = ["DEFAULT_OPSET", "MAX_OPSET", "MIN_OPSET", "OnnxExport", "count_delta_nodes", "export_onnx"]

logger = logging.getLogger(__name__)

# Opset 18 is the torch.onnx exporter's native opset (torchlib is written against it, so no
# version conversion runs), every ONNX Runtime >= 1.14 implements it, and TensorRT 10's parser
# imports it (the TensorRT op list the body keeps to is the opset-17 support matrix; 18 only moved
# Reduce* axes from attributes to inputs, which TensorRT reads as constants).
DEFAULT_OPSET = 18
MIN_OPSET = 18
# The body's ops keep their opset-18 semantics up to here (checked by the tests).
MAX_OPSET = 23
_PROTOBUF_LIMIT = 2**31 - 1


@dataclass(frozen=True)
class OnnxExport:
    """What :func:`export_onnx` wrote."""

    path: Path
    delta_nodes: int  # DeltaAttention nodes written (0 when inline=True: they are expanded)
    delta_sites: int  # delta_opt::delta_attention calls in the exported program
    # Identical calls (same inputs and parameters) are computed once: delta_nodes equals the
    # number of distinct calls, which is delta_sites unless a model repeats a call verbatim.
    opset: int
    inline: bool
    input_names: tuple[str, ...]
    output_names: tuple[str, ...]
    conversion: Any = None  # the delta_opt.optimize report when export_onnx converted the model (config=)
    # The ExportedProgram that was lowered (after the exporter's decompositions): ``program.module()``
    # runs in PyTorch exactly what the ONNX file computes.
    program: Any = field(default=None, repr=False)


def count_delta_nodes(model: onnx.ModelProto) -> int:
    """Number of ``delta_opt.DeltaAttention`` nodes in the main graph of ``model``."""
    return sum(1 for n in model.graph.node if n.domain == DOMAIN and n.op_type == OP_TYPE)


def _count_sites(program: torch.export.ExportedProgram) -> tuple[int, int]:
    """(all, distinct) ``delta_opt::delta_attention`` calls in the program's graph.

    Calls with the same inputs and parameters are distinct only once: the exporter's optimizer
    computes such a call a single time (common-subexpression elimination), which is exact.
    """
    target = torch.ops.delta_opt.delta_attention.default
    calls = [n for n in program.graph.nodes if n.op == "call_function" and n.target is target]
    distinct = {(tuple(n.args), tuple(sorted(n.kwargs.items()))) for n in calls}
    return len(calls), len(distinct)


def _check_arguments(
    program_or_model: Any, example_inputs: Any, path: Any, opset: int | None, dynamic_shapes: Any, force: bool
) -> tuple[Path, int]:
    if not isinstance(program_or_model, (torch.nn.Module, torch.export.ExportedProgram)):
        raise ValueError(
            f"program_or_model must be a torch.nn.Module or torch.export.ExportedProgram; got {type(program_or_model).__name__}"
        )
    if isinstance(program_or_model, torch.nn.Module) and not isinstance(example_inputs, (tuple, Mapping)):
        raise ValueError(
            f"example_inputs must be a tuple of positional inputs or a dict of keyword inputs; got {type(example_inputs).__name__}"
        )
    if isinstance(program_or_model, torch.export.ExportedProgram) and dynamic_shapes is not None:
        raise ValueError("dynamic_shapes must be None for an ExportedProgram: its shapes were fixed by torch.export")
    if not isinstance(path, (str, Path)):
        raise ValueError(f"path must be a str or pathlib.Path; got {type(path).__name__}")
    path = Path(path)
    if path.suffix != ".onnx":
        raise ValueError(f"path must end in .onnx; got {str(path)!r}")
    if path.exists() and not force:
        raise FileExistsError(f"{path} exists; pass force=True to overwrite it")
    opset = DEFAULT_OPSET if opset is None else opset
    if isinstance(opset, bool) or not isinstance(opset, int) or not MIN_OPSET <= opset <= MAX_OPSET:
        raise ValueError(f"opset must be an integer in [{MIN_OPSET}, {MAX_OPSET}] or None ({DEFAULT_OPSET}); got {opset!r}")
    return path, opset


def _convert(model: Any, example_inputs: Any, config: DeltaConfig, dynamic_shapes: Any) -> tuple[Any, Any]:
    """Convert the model's attention with ``delta_opt.optimize`` first: (program, report)."""
    if not isinstance(config, DeltaConfig):
        raise ValueError(f"config must be a DeltaConfig or None; got {type(config).__name__}")
    import delta_opt

    optimize = getattr(delta_opt, "optimize", None)
    if optimize is None:
        raise ValueError(
            "config= asks export_onnx to convert the model with delta_opt.optimize first, which this "
            "installation does not provide; export a model whose attention already calls delta_attention"
        )
    return optimize(model, example_inputs, config, dynamic_shapes=dynamic_shapes)


def _torch_export(model: Any, example_inputs: Any, translation: Translation, opset: int, dynamic_shapes: Any):
    args, kwargs = (), None
    if isinstance(example_inputs, Mapping):
        kwargs = dict(example_inputs)
    elif example_inputs is not None:
        args = tuple(example_inputs)
    # The exporter prints progress lines and warns about things that are not the user's concern
    # (e.g. torchvision ops it skips); errors still propagate with their full message.
    registry_logger = logging.getLogger("torch.onnx._internal.exporter._registration")
    level = registry_logger.level
    registry_logger.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return torch.onnx.export(
                model,
                args,
                kwargs=kwargs,
                dynamo=True,
                custom_translation_table=translation.table(),
                dynamic_shapes=dynamic_shapes,
                opset_version=opset,
                optimize=True,
                verbose=False,
            )
    finally:
        registry_logger.setLevel(level)


def export_onnx(
    program_or_model: torch.nn.Module | torch.export.ExportedProgram,
    example_inputs: tuple[Any, ...] | Mapping[str, Any] | None,
    path: str | Path,
    *,
    config: DeltaConfig | None = None,
    opset: int | None = None,
    dynamic_shapes: Any = None,
    inline: bool = False,
    force: bool = False,
) -> OnnxExport:
    """Export a model whose attention calls ``delta_attention`` to ONNX.

    Args:
        program_or_model: an ``nn.Module`` (exported with ``torch.export``, non-strict) or an
            ``ExportedProgram`` (taken as is; ``example_inputs`` may then be None).
        example_inputs: positional inputs (tuple) or keyword inputs (dict) for export.
        path: the ``.onnx`` file to write; written atomically, never over an existing file
            unless ``force``.
        config: when given, the model is first converted with ``delta_opt.optimize(model,
            example_inputs, config, dynamic_shapes=dynamic_shapes)`` and its report is returned
            in :attr:`OnnxExport.conversion`.
        opset: ONNX opset of the default domain, 18 (default) to 23.
        dynamic_shapes: as ``torch.export`` takes it (e.g. ``{"x": {0: Dim("batch"), 1:
            Dim("seq")}}``); None exports static shapes. Every DeltaAttention node reads its sizes
            at run time, so the attention never limits which dims may be dynamic (except the head
            dim when ``scale`` is left to default to ``1/sqrt(D)``).
        inline: write the function body's standard ops in place of each node (a plain ONNX
            model) instead of ``DeltaAttention`` nodes plus a model-local function.
        force: overwrite ``path`` if it exists.

    Returns:
        :class:`OnnxExport` with the node count: one node per ``delta_attention`` call of the
        program (calls repeated verbatim, same inputs and parameters, share one node).
    """
    path, opset = _check_arguments(program_or_model, example_inputs, path, opset, dynamic_shapes, force)
    if not isinstance(inline, bool):
        raise ValueError(f"inline must be a bool; got {inline!r}")
    conversion = None
    if config is not None:
        # The pass traces the model (with dynamic_shapes); the program it returns is exported as is.
        program_or_model, conversion = _convert(program_or_model, example_inputs, config, dynamic_shapes)
        dynamic_shapes = None

    translation = Translation()
    try:
        onnx_program = _torch_export(program_or_model, example_inputs, translation, opset, dynamic_shapes)
    except Exception as e:
        # The exporter wraps errors of a translation function in its own; surface ours as is.
        cause: BaseException | None = e
        while cause is not None and not isinstance(cause, ExportError):
            cause = cause.__cause__
        if cause is not None:
            raise cause from None
        raise
    model = onnx_program.model_proto
    sites, distinct = _count_sites(onnx_program.exported_program)
    written = count_delta_nodes(model)
    if written != distinct:  # each distinct site must become exactly one node; anything else is a bug here
        raise RuntimeError(f"exported {written} DeltaAttention nodes for {distinct} distinct delta_attention sites")
    if distinct != sites:
        logger.info("%d identical delta_attention call(s) share one DeltaAttention node", sites - distinct)

    if written:
        # Replace any body of our op already there (never keep a stale one), keep other functions.
        others = [f for f in model.functions if (f.domain, f.name) != (DOMAIN, OP_TYPE)]
        del model.functions[:]
        model.functions.extend(others)
        # The body implements the rules the nodes use (a paper-only model keeps the leanest body).
        model.functions.append(build_function(translation.element_type, opset, rules=translation.rules))  # type: ignore[arg-type]
        if not any(o.domain == DOMAIN for o in model.opset_import):
            model.opset_import.append(onnx.helper.make_opsetid(DOMAIN, VERSION))
    if inline and written:
        model = onnx.inliner.inline_local_functions(model)
        del model.functions[:]  # all local functions are expanded now
        kept = [o for o in model.opset_import if o.domain != DOMAIN]
        del model.opset_import[:]
        model.opset_import.extend(kept)
        # The inlined bodies carry their attributes as constants now: fold the size arithmetic
        # they feed, as the exporter does for the rest of the graph.
        import onnxscript.optimizer

        model = onnxscript.optimizer.optimize(model)
    size = model.ByteSize()
    if size > _PROTOBUF_LIMIT:
        raise ValueError(
            f"the model is {size / 2**30:.1f} GiB, over protobuf's 2 GiB limit; "
            "export_onnx does not write external-data files yet"
        )
    onnx.checker.check_model(model)
    atomic_write_bytes(path, model.SerializeToString(), force=force)
    if not sites:
        logger.warning("%s: the model calls delta_attention nowhere; its attention is exported as it is", path)
    logger.info("wrote %s: %d DeltaAttention node(s), opset %d, inline=%s", path, written, opset, inline)
    return OnnxExport(
        path=path,
        delta_nodes=0 if inline else written,
        delta_sites=sites,
        opset=opset,
        inline=inline,
        input_names=tuple(i.name for i in model.graph.input),
        output_names=tuple(o.name for o in model.graph.output),
        conversion=conversion,
        program=onnx_program.exported_program,
    )
