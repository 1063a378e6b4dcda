"""Compare an exported ONNX model against PyTorch through Polygraphy's runners and comparator.

ONNX Runtime always runs (through :func:`delta_opt.backends.onnx.load_session`, so a missing
function body is reported clearly); TensorRT runs when its Python package is importable (it is
imported only then). Each backend is compared against the PyTorch reference with Polygraphy's
``CompareFunc.simple`` (pass when ``|a - b| <= atol + rtol * |b|`` elementwise, as ``numpy.isclose``).
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np

__all__ = ["BackendComparison", "ComparisonResult", "OutputStats", "compare", "compare_runners"]


@dataclass(frozen=True)
class OutputStats:
    """Error statistics of one output over one input feed."""

    output: str
    iteration: int
    passed: bool
    max_abs: float
    mean_abs: float
    median_abs: float
    max_rel: float


@dataclass(frozen=True)
class BackendComparison:
    """One backend against the PyTorch reference."""

    backend: str
    passed: bool
    outputs: tuple[OutputStats, ...]

    @property
    def max_abs(self) -> float:
        return max((o.max_abs for o in self.outputs), default=0.0)


@dataclass(frozen=True)
class ComparisonResult:
    """Pass/fail of every backend that ran, their error statistics, and the backends that did not run."""

    passed: bool
    backends: tuple[BackendComparison, ...]
    skipped: dict[str, str] = field(default_factory=dict)  # backend -> why it did not run

    def __bool__(self) -> bool:
        return self.passed

    def backend(self, name: str) -> BackendComparison:
        for b in self.backends:
            if b.backend == name:
                return b
        raise KeyError(f"backend {name!r} did not run; ran: {[b.backend for b in self.backends]}, skipped: {self.skipped}")


def tensorrt_available() -> bool:
    """Whether the ``tensorrt`` Python package can be imported (without importing it)."""
    return importlib.util.find_spec("tensorrt") is not None


def _tensorrt_runner(path: Path, plugins: Sequence[str]):
    # Imported only here: polygraphy's TensorRT backend imports tensorrt lazily as well.
    from polygraphy.backend.trt import EngineFromNetwork, LoadPlugins, NetworkFromOnnxPath, TrtRunner

    network = NetworkFromOnnxPath(str(path))
    if plugins:
        network = LoadPlugins(plugins=list(plugins), obj=network)
    return TrtRunner(EngineFromNetwork(network), name="tensorrt")


def _simple_compare(atol: float, rtol: float):
    try:  # Polygraphy >= 0.50 names the class; CompareFunc.simple is deprecated there.
        from polygraphy.comparator.compare import SimpleCompareFunc
    except ImportError:  # pragma: no cover - older Polygraphy
        from polygraphy.comparator import CompareFunc

        return CompareFunc.simple(atol=atol, rtol=rtol)
    return SimpleCompareFunc(atol=atol, rtol=rtol)


def _feeds(inputs: Any, names: Sequence[str]) -> list[dict[str, np.ndarray]]:
    feeds = [inputs] if isinstance(inputs, Mapping) else list(inputs)
    if not feeds:
        raise ValueError("inputs must hold at least one feed (a dict of input name -> array)")
    out = []
    for i, feed in enumerate(feeds):
        if not isinstance(feed, Mapping):
            raise ValueError(f"inputs[{i}] must be a dict of input name -> array; got {type(feed).__name__}")
        missing = [n for n in names if n not in feed]
        if missing:
            raise ValueError(f"inputs[{i}] lacks the model input(s) {missing}; the model's inputs are {list(names)}")
        out.append({n: np.asarray(feed[n].numpy() if hasattr(feed[n], "numpy") else feed[n]) for n in names})
    return out


def compare(
    onnx_path: str | Path,
    reference: Callable[..., Any],
    inputs: Mapping[str, Any] | Sequence[Mapping[str, Any]],
    *,
    atol: float = 1e-4,
    rtol: float = 0.0,
    tensorrt: bool | None = None,
    tensorrt_plugins: Sequence[str] = (),
) -> ComparisonResult:
    """Run ``onnx_path`` in ONNX Runtime (and TensorRT) and ``reference`` in PyTorch on ``inputs``.

    Args:
        onnx_path: an exported model (e.g. from ``delta_opt.export_onnx``).
        reference: the PyTorch module or function the model was exported from, called as
            ``reference(*arrays)`` with the model's inputs in the ONNX model's input order.
        inputs: one feed or a list of feeds, each a dict of ONNX input name -> array / tensor.
        atol, rtol: the elementwise tolerance ``|onnx - torch| <= atol + rtol * |torch|``.
        tensorrt: None runs TensorRT when it is importable, True requires it (ValueError when it
            is not), False never runs it.
        tensorrt_plugins: plugin libraries to load before building the TensorRT engine.

    Returns:
        :class:`ComparisonResult`: passed only if every backend that ran passed every output of
        every feed, with max/mean/median absolute and max relative errors per output.
    """
    from polygraphy.backend.onnxrt import OnnxrtRunner

    from ..onnx.session import load_session
    from .torch_runner import TorchRunner, metadata_from_session

    path = Path(onnx_path)
    if not path.is_file():
        raise ValueError(f"onnx_path {str(path)!r} does not exist")
    if not callable(reference):
        raise ValueError(f"reference must be a PyTorch module or callable; got {type(reference).__name__}")
    if tensorrt not in (None, True, False):
        raise ValueError(f"tensorrt must be None (when importable), True or False; got {tensorrt!r}")
    for name, value in (("atol", atol), ("rtol", rtol)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0:
            raise ValueError(f"{name} must be a number >= 0; got {value!r}")

    session = load_session(path)  # checks the function bodies before anything runs
    input_names = [i.name for i in session.get_inputs()]
    output_names = [o.name for o in session.get_outputs()]
    feeds = _feeds(inputs, input_names)

    runners: list[Any] = [
        TorchRunner(reference, metadata_from_session(session), output_names, name="pytorch"),
        OnnxrtRunner(session, name="onnxruntime"),
    ]
    skipped: dict[str, str] = {}
    if tensorrt is False:
        skipped["tensorrt"] = "not requested (tensorrt=False)"
    elif tensorrt_available():
        runners.append(_tensorrt_runner(path, tensorrt_plugins))
    elif tensorrt:
        raise ValueError("tensorrt=True needs the tensorrt Python package (pip install tensorrt), which is not importable")
    else:
        skipped["tensorrt"] = "needs tensorrt (the tensorrt Python package is not importable)"

    return compare_runners(runners, feeds, atol=atol, rtol=rtol, skipped=skipped)


def compare_runners(
    runners: Sequence[Any],
    feeds: Sequence[Mapping[str, np.ndarray]],
    *,
    atol: float,
    rtol: float,
    skipped: Mapping[str, str] | None = None,
) -> ComparisonResult:
    """Run Polygraphy ``runners`` on ``feeds`` and compare each one after the first against the first.

    Returns a :class:`ComparisonResult` with one :class:`BackendComparison` per compared runner
    (named after the runner), passed when every output of every feed is within
    ``|a - b| <= atol + rtol * |b|`` of the first runner's.
    """
    from polygraphy.comparator import Comparator
    from polygraphy.logger import G_LOGGER

    with G_LOGGER.verbosity(G_LOGGER.ERROR):
        results = Comparator.run(list(runners), data_loader=list(feeds))
        accuracy = Comparator.compare_accuracy(
            results,
            comparisons=[(0, i) for i in range(1, len(runners))],
            compare_func=_simple_compare(atol, rtol),
        )

    backends = []
    for (_, runner_name), iterations in accuracy[0].items():  # one AccuracyResult per compare func
        stats = tuple(
            OutputStats(
                output=name,
                iteration=it,
                passed=bool(res),
                max_abs=res.max_absdiff,
                mean_abs=res.mean_absdiff,
                median_abs=res.median_absdiff,
                max_rel=res.max_reldiff,
            )
            for it, per_output in enumerate(iterations)
            for name, res in per_output.items()
        )
        backends.append(BackendComparison(runner_name, all(s.passed for s in stats) and bool(stats), stats))
    return ComparisonResult(passed=all(b.passed for b in backends), backends=tuple(backends), skipped=dict(skipped or {}))
