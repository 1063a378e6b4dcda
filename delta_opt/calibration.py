"""Calibration: choose, layer by layer, the correction that helps the model, from real activations.

As post-training quantisation calibrates scales on sample data, :func:`calibrate` converts the
model, then for each layer tries every candidate (a correction rule, a number of retrieved keys,
optionally a stride) on calibration inputs and keeps the one whose *model output* is closest to
the dense model's — the KL divergence of the next-token distributions for a language model, the
relative L2 error of the output otherwise. The result is a :class:`~delta_opt.DeltaConfig` whose
``layer_plans`` record the choice; every backend honours it.

Why the model output and not each layer's attention error: on SmolLM2-135M, ``taylor`` with
retrieval has the better per-layer attention SQNR than ``none`` with retrieval, yet the worse
perplexity (README, "Corrections, retrieval and calibration"). A local proxy would pick it everywhere.

The search is greedy in layer order (each layer is tried with the layers before it already
calibrated), costs ``layers x candidates`` forward passes, and edits the converted program's op
arguments in place between passes — no re-export. Two refinements: ``tolerance`` prefers the
cheapest candidate (pair-count cost model) that is nearly as good as a layer's best, and
``per_head`` adds a per-head mix of the rules, made from each head's own attention error and then
judged, like every candidate, by the model output.

Measured on SmolLM2-135M (README, "Corrections, retrieval and calibration"): on 2K tokens of
``inspect``'s source the greedy search lowered the calibration KL from 0.165 to 0.104, but most
layers' candidates differed by less than 1% — the per-layer choice carried little signal, and the
calibrated plan did not beat the best uniform candidate on the evaluation texts.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any, Iterable, Mapping, Sequence

import torch

from .config import DeltaConfig, default_tail
from .plan import Correction, LayerPlan, format_corrections

__all__ = ["Candidate", "CalibrationReport", "DEFAULT_CANDIDATES", "calibrate", "calibrate_layers"]

OP = "delta_opt::delta_attention"


@dataclasses.dataclass(frozen=True)
class Candidate:
    """One way to run a layer: a correction rule, retrieved keys per anchor, optionally a stride
    and a window (None: the config's), and optionally one rule per query head (``heads``, which
    then overrides ``correction``; per-head calibration makes these)."""

    correction: Correction
    retrieve: int = 0
    stride: int | None = None
    window: int | None = None
    heads: tuple[Correction, ...] | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "correction", Correction.parse(self.correction))
        if self.heads is not None:
            object.__setattr__(self, "heads", tuple(Correction.parse(r, name="heads") for r in self.heads))
            if not self.heads:
                raise ValueError("heads must name one rule per query head; got none")
        if isinstance(self.retrieve, bool) or not isinstance(self.retrieve, int) or self.retrieve < 0:
            raise ValueError(f"retrieve must be an integer >= 0; got {self.retrieve!r}")
        for name in ("stride", "window"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise ValueError(f"{name} must be an integer >= 1 or None; got {value!r}")

    @property
    def rules(self) -> str:
        """The op's ``correction`` argument: one rule, or one per head."""
        return format_corrections(self.heads) if self.heads else self.correction.value

    @property
    def label(self) -> str:
        parts = [f"heads({self.rules})" if self.heads else self.correction.value]
        if self.retrieve:
            parts.append(f"r{self.retrieve}")
        if self.stride is not None:
            parts.append(f"G{self.stride}")
        if self.window is not None:
            parts.append(f"W{self.window}")
        return "+".join(parts)

    def plan(self, heads: int | None) -> LayerPlan:
        if self.heads is not None:
            corrections: tuple[Correction, ...] = self.heads
        else:
            corrections = (self.correction,) * heads if heads else ()
        return LayerPlan(corrections=corrections, window=self.window, stride=self.stride, retrieve=self.retrieve)


DEFAULT_CANDIDATES: tuple[Candidate, ...] = (
    Candidate(Correction.NONE),
    Candidate(Correction.PAPER),
    Candidate(Correction.TAYLOR),
)


@dataclasses.dataclass
class CalibrationReport:
    """What calibration measured: the objective of every candidate on every layer, and the choice."""

    objective: str
    baseline: float  # the objective with the config as given, before calibration
    calibrated: float  # the objective with every layer's choice applied
    layers: dict[int, dict[str, float]]  # layer -> {candidate label: objective}
    chosen: dict[int, str]  # layer -> candidate label
    config: DeltaConfig
    forward_passes: int
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        return {
            "objective": self.objective,
            "baseline": self.baseline,
            "calibrated": self.calibrated,
            "layers": {str(k): v for k, v in self.layers.items()},
            "chosen": {str(k): v for k, v in self.chosen.items()},
            "config": self.config.to_dict(),
            "forward_passes": self.forward_passes,
            "seconds": self.seconds,
        }

    def __str__(self) -> str:
        labels = sorted({label for scores in self.layers.values() for label in scores})
        lines = [f"calibration objective: {self.objective} (lower is better); "
                 f"before {self.baseline:.4g}, after {self.calibrated:.4g}; "
                 f"{self.forward_passes} forward passes in {self.seconds:.0f} s"]
        lines.append("layer  " + "  ".join(f"{label:>12}" for label in labels) + "  chosen")
        for layer, scores in sorted(self.layers.items()):
            cells = "  ".join(f"{scores.get(label, float('nan')):>12.4g}" for label in labels)
            lines.append(f"{layer:>5}  {cells}  {self.chosen[layer]}")
        return "\n".join(lines)


def calibrate(
    model: torch.nn.Module,
    calibration_inputs: Any,
    config: DeltaConfig,
    *,
    candidates: Sequence[Candidate] = DEFAULT_CANDIDATES,
    objective: str = "auto",
    dynamic_shapes: Any = None,
    tolerance: float = 0.0,
    per_head: bool = False,
) -> DeltaConfig:
    """``config`` with a per-layer plan chosen on ``calibration_inputs`` (see the module docstring).

    Args:
        model: the dense model (eval mode), as given to :func:`delta_opt.optimize`.
        calibration_inputs: example inputs (a tuple, a dict of keyword arguments or a tensor) on
            which the choice is measured; use real data at the deployment length.
        config: the conversion to calibrate; its ``window``, ``sinks`` and ``tail`` stay fixed.
        candidates: what each layer may use (default: the rules none, paper and taylor).
        objective: ``"kl"`` (next-token KL; for outputs [B, N, V] of logits), ``"rel_l2"``, or
            ``"auto"`` (KL when the output looks like logits).
        tolerance: relative slack on the objective: a layer takes the cheapest candidate (fewest
            attended pairs, :func:`delta_opt.ops.cost.attention_cost`) whose objective is within
            ``(1 + tolerance)`` of the layer's best. 0 takes the best.
        per_head: also try, per layer, a per-head mix of the candidates' rules: on the layer's own
            inputs, each query head takes the rule with the lowest attention-output error against
            dense at its non-anchor rows ``[0, Np)`` (one mix per retrieve value). The mix is one
            more candidate, judged like the others by the model's output — a local error alone
            is a poor guide (module docstring). Costs one more forward pass per layer and mix.
    """
    return calibrate_layers(
        model, calibration_inputs, config, candidates=candidates, objective=objective,
        dynamic_shapes=dynamic_shapes, tolerance=tolerance, per_head=per_head,
    ).config  # fmt: skip


def calibrate_layers(
    model: torch.nn.Module,
    calibration_inputs: Any,
    config: DeltaConfig,
    *,
    candidates: Sequence[Candidate] = DEFAULT_CANDIDATES,
    objective: str = "auto",
    dynamic_shapes: Any = None,
    tolerance: float = 0.0,
    per_head: bool = False,
) -> CalibrationReport:
    """Like :func:`calibrate`, returning every measurement alongside the calibrated config."""
    from .passes import optimize  # torch.export machinery: load on use

    if not candidates:
        raise ValueError("candidates must name at least one Candidate")
    candidates = [c if isinstance(c, Candidate) else Candidate(**c) for c in candidates]
    if isinstance(tolerance, bool) or not isinstance(tolerance, (int, float)) or not tolerance >= 0:
        raise ValueError(f"tolerance must be a number >= 0; got {tolerance!r}")
    if objective not in ("auto", "kl", "rel_l2"):
        raise ValueError(f"objective must be 'auto', 'kl' or 'rel_l2'; got {objective!r}")
    start = time.perf_counter()
    program, _ = optimize(model, calibration_inputs, config, dynamic_shapes=dynamic_shapes)
    module = program.module()
    sites = _sites_by_layer(module)
    if not sites:
        raise ValueError("calibrate found no converted attention layer to calibrate (see delta_opt.optimize's report)")

    with torch.no_grad():
        reference = _main_output(_call(model, calibration_inputs))
    kind = _objective_kind(objective, reference)

    def score() -> float:
        with torch.no_grad():
            return _distance(kind, reference, _main_output(_call(module, calibration_inputs)))

    baseline = score()
    passes = 1
    layers: dict[int, dict[str, float]] = {}
    chosen: dict[int, Candidate] = {}
    for layer, nodes in sites.items():
        original = [dict(node.kwargs) for node in nodes]
        tried = list(candidates)
        if per_head:
            tried += _per_head_candidates(module, nodes, candidates, lambda: _call(module, calibration_inputs))
            passes += 1
        scores: dict[str, float] = {}
        for candidate in tried:
            _apply(module, nodes, original, candidate, config)
            scores[candidate.label] = score()
            passes += 1
        best = _choose(tried, scores, [_pairs(nodes, original, c, config) for c in tried], tolerance)
        _apply(module, nodes, original, best, config)  # greedy: later layers see this choice
        layers[layer], chosen[layer] = scores, best
    calibrated_score = score()
    passes += 1

    plans = {layer: c.plan(_heads(sites[layer])) for layer, c in chosen.items()}
    calibrated = config.replace(layer_plans={**dict(config.layer_plans), **plans})
    return CalibrationReport(
        objective=kind,
        baseline=baseline,
        calibrated=calibrated_score,
        layers=layers,
        chosen={layer: c.label for layer, c in chosen.items()},
        config=calibrated,
        forward_passes=passes,
        seconds=time.perf_counter() - start,
    )


def _per_head_candidates(
    module: torch.fx.GraphModule, nodes: Sequence[torch.fx.Node], candidates: Sequence[Candidate], run: Any
) -> list[Candidate]:
    """Per-head mixes of the candidates' rules (one per retrieve value), each head taking the rule
    with the lowest attention-output error at its non-anchor rows on the layer's own inputs."""
    groups: dict[int, list[Candidate]] = {}
    for c in candidates:
        if c.heads is None and c.stride is None and c.window is None:
            groups.setdefault(c.retrieve, []).append(c)
    groups = {r: group for r, group in groups.items() if len({c.correction for c in group}) > 1}
    if not groups:
        return []
    calls = _capture(module, nodes, run)
    mixes = []
    for retrieve, group in groups.items():
        errors = sum(_head_errors(args, kwargs, group, retrieve) for args, kwargs in calls)  # [rules, Hq]
        rules = tuple(group[int(i)].correction for i in errors.argmin(0))
        if len(set(rules)) > 1:  # one rule everywhere is already a candidate
            mixes.append(Candidate(rules[0], retrieve=retrieve, heads=rules))
    return mixes


def _capture(module: torch.fx.GraphModule, nodes: Sequence[torch.fx.Node], run: Any) -> list[tuple[tuple, dict]]:
    """The arguments the op receives at ``nodes`` in one forward pass (``run()``)."""
    op = torch.ops.delta_opt.delta_attention.default
    calls: list[tuple[tuple, dict]] = []

    def record(*args: Any, **kwargs: Any) -> torch.Tensor:
        calls.append((args, kwargs))
        return op(*args, **kwargs)

    for node in nodes:
        node.target = record
    module.recompile()
    try:
        with torch.no_grad():
            run()
    finally:
        for node in nodes:
            node.target = op
        module.recompile()
    return calls


def _head_errors(args: tuple, kwargs: dict, group: Sequence[Candidate], retrieve: int) -> torch.Tensor:
    """[len(group), Hq] squared error against dense attention over rows ``[0, Np)`` that are not
    anchors, relative to the dense output's energy there, for each rule of ``group``."""
    from .ops.checks import num_corrected_rows, resolve_tail

    op = torch.ops.delta_opt.delta_attention.default
    q, k = args[0], args[1]
    n_q, n_k, stride = q.shape[2], k.shape[2], kwargs["stride"]
    n_corrected = num_corrected_rows(n_q, stride, resolve_tail(kwargs["tail"], stride)) if n_q == n_k else 0
    rows = torch.arange(n_corrected, device=q.device)
    rows = rows[rows % stride != 0]
    errors = torch.zeros(len(group), q.shape[1], dtype=torch.float64)
    if rows.numel() == 0:
        return errors
    with torch.no_grad():
        dense = op(*args, **{**kwargs, "window": n_k, "stride": 1, "tail": 0, "correction": "paper", "retrieve": 0})
        dense = dense[:, :, rows].double()
        energy = dense.square().sum(dim=(0, 2, 3)).clamp_min(torch.finfo(torch.float64).tiny)
        for i, c in enumerate(group):
            approx = op(*args, **{**kwargs, "correction": c.correction.value, "retrieve": retrieve})[:, :, rows]
            errors[i] = (approx.double() - dense).square().sum(dim=(0, 2, 3)) / energy
    return errors


def _choose(
    candidates: Sequence[Candidate], scores: Mapping[str, float], pairs: Sequence[float], tolerance: float
) -> Candidate:
    """The cheapest candidate within ``(1 + tolerance)`` of the best objective (ties: list order)."""
    best = min(scores[c.label] for c in candidates)
    good = [i for i, c in enumerate(candidates) if scores[c.label] <= best * (1 + tolerance) + 1e-12]
    return candidates[min(good, key=lambda i: (pairs[i], i))]


def _pairs(
    nodes: Sequence[torch.fx.Node], original: Sequence[Mapping[str, Any]], candidate: Candidate, config: DeltaConfig
) -> float:
    """Attended (query, key) pairs per head of a layer's sites under ``candidate`` (cost model);
    0 when a length is not static (the choice then falls back to list order among the good)."""
    from .ops.cost import op_pairs

    total = 0.0
    for node, kwargs in zip(nodes, original):
        val = node.args[0].meta.get("val")
        n = val.shape[2] if val is not None else None
        if not isinstance(n, int):
            return 0.0
        total += op_pairs(n, _candidate_kwargs(kwargs, candidate, config))
    return total


def _sites_by_layer(module: torch.fx.GraphModule) -> dict[int, list[torch.fx.Node]]:
    from .passes.core.graph import layer_index

    target = torch.ops.delta_opt.delta_attention.default
    sites: dict[int, list[torch.fx.Node]] = {}
    for node in module.graph.nodes:
        if node.op == "call_function" and node.target == target:
            stack = node.meta.get("nn_module_stack") or {}
            path = list(stack.values())[-1][0] if stack else ""
            layer = layer_index(path)
            if layer is not None:
                sites.setdefault(layer, []).append(node)
    return dict(sorted(sites.items()))


def _heads(nodes: Iterable[torch.fx.Node]) -> int | None:
    """Query heads of a layer's sites when they agree and are static (per-head plans need it)."""
    heads = {node.args[0].meta["val"].shape[1] for node in nodes if "val" in node.args[0].meta}
    (value,) = heads if len(heads) == 1 else (None,)
    return value if isinstance(value, int) else None


def _candidate_kwargs(kwargs: Mapping[str, Any], candidate: Candidate, config: DeltaConfig) -> dict[str, Any]:
    """A site's op arguments (as converted) with ``candidate`` applied; an unset tail follows
    the candidate's stride as it would in the config (:func:`~delta_opt.config.default_tail`)."""
    stride = candidate.stride or kwargs["stride"]
    return {
        **kwargs,
        "correction": candidate.rules,
        "retrieve": candidate.retrieve,
        "stride": stride,
        "tail": kwargs["tail"] if config.tail is not None else default_tail(stride),
        "window": candidate.window or kwargs["window"],
    }


def _apply(
    module: torch.fx.GraphModule,
    nodes: Sequence[torch.fx.Node],
    original: Sequence[Mapping[str, Any]],
    candidate: Candidate,
    config: DeltaConfig,
) -> None:
    for node, kwargs in zip(nodes, original):
        node.kwargs = _candidate_kwargs(kwargs, candidate, config)
    module.recompile()


def _call(model: Any, inputs: Any) -> Any:
    if isinstance(inputs, Mapping):
        return model(**inputs)
    if isinstance(inputs, (tuple, list)):
        return model(*inputs)
    return model(inputs)


def _main_output(out: Any) -> torch.Tensor:
    """A tensor, element 0 of a tuple, or a ModelOutput's first field (logits, last hidden state)."""
    while not isinstance(out, torch.Tensor):
        out = out[0]
    return out


def _objective_kind(objective: str, reference: torch.Tensor) -> str:
    if objective != "auto":
        return objective
    return "kl" if reference.dim() == 3 and reference.shape[-1] > 1 and reference.dtype.is_floating_point else "rel_l2"


def _distance(kind: str, reference: torch.Tensor, approx: torch.Tensor) -> float:
    from .eval.metrics import kl_divergence, relative_l2

    if kind == "kl":
        return kl_divergence(reference, approx)
    return relative_l2(reference, approx)
