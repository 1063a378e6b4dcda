"""An attention site as the matchers find it, and the decisions that follow from it.

A matcher (one per pass) turns a region of the graph into an :class:`AttentionSite`: the node
whose value the op will replace, the resolved q/k/v, the scale, the mask terms, and any
structural ``problem`` that rules conversion out. :func:`skip_reason` then applies the rules
that do not depend on the form: cross-attention, the config's layer filter, ``min_seq_len``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch
from torch.fx import Node

from ...config import DeltaConfig
from ..report import SiteReport
from .graph import GraphContext, layer_index, module_path, module_type, size_range
from .masks import MaskPlan, MaskTerm
from .operands import Operand

__all__ = ["AttentionSite", "Unmatched", "site_report", "skip_reason"]


@dataclass
class Unmatched:
    """A softmax that is not (recognisably) attention, with the reason."""

    node: Node
    reason: str


@dataclass
class AttentionSite:
    """One attention computation found in a graph.

    Attributes:
        form: the pattern name (see :class:`~delta_opt.passes.report.SiteReport`).
        anchor: the node whose value the op's output replaces ([B, H, N, Dv] or [B*H, N, Dv]).
        nodes: the matched region, whose metadata asserts go with it when it is replaced.
        q, k, v: the resolved operands (None when they could not be resolved; see ``problem``).
        scale: the softmax scale the op gets (already multiplied by constants folded into q/k).
        causal: the site's own causal flag (SDPA ``is_causal``).
        mask_terms: masks applied to the scores.
        problem: why the site cannot be converted, if a structural reason says so.
        notes: remarks for the report.
    """

    form: str
    anchor: Node
    nodes: set[Node] = field(default_factory=set)
    q: Operand | None = None
    k: Operand | None = None
    v: Operand | None = None
    scale: float | None = None
    causal: bool = False
    mask_terms: tuple[MaskTerm, ...] = ()
    problem: str | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def module(self) -> str:
        return module_path(self.anchor)


def _size(x: Any) -> int | str:
    return x if isinstance(x, int) else str(x)


def _same_size(a: Any, b: Any) -> bool:
    if isinstance(a, int) and isinstance(b, int):
        return a == b
    if isinstance(a, torch.SymInt) and isinstance(b, torch.SymInt):
        return a.node.expr == b.node.expr
    return False


def skip_reason(ctx: GraphContext, site: AttentionSite, config: DeltaConfig) -> str | None:
    """Why ``site`` stays dense, or None to convert it."""
    if site.problem:
        return site.problem
    assert site.q is not None and site.k is not None
    q, k = site.q, site.k
    layout = _mask_layout_problem(ctx, site) or _output_problem(ctx, site)
    if layout:
        return layout
    if not _same_size(q.shape[2], k.shape[2]):
        return f"cross-attention: query length {q.shape[2]} != key length {k.shape[2]}"
    q_inputs, k_inputs = ctx.data_sources(q.node), ctx.data_sources(k.node)
    bare = q.node in ctx.data or k.node in ctx.data  # q/k handed in directly: provenance says nothing
    if q_inputs and k_inputs and q_inputs.isdisjoint(k_inputs) and not bare:
        names = lambda nodes: ", ".join(sorted(n.name for n in nodes))  # noqa: E731
        return f"cross-attention: keys come from input(s) {names(k_inputs)}, queries from {names(q_inputs)}"
    path = site.module
    dense = config.dense_reason(path, layer_index(path))
    if dense:
        return dense
    return _min_seq_len_reason(q.shape[2], config.min_seq_len, site)


def _mask_layout_problem(ctx: GraphContext, site: AttentionSite) -> str | None:
    """A mask applied to 4-D scores cannot follow q into the merged [1, B*H, N, D] layout when it
    varies over a batch of more than one."""
    assert site.q is not None
    if not site.q.merged:
        return None
    for term in site.mask_terms:
        shape = ctx.hint_shape(term.node) or ()
        if term.scores_rank != 4 or len(shape) < 3:
            continue
        padded = (1,) * (4 - len(shape)) + tuple(shape)
        if padded[0] != 1 or (padded[1] != 1 and padded[1] != site.q.hint[1]):
            return f"mask {term.node.name} of shape {list(shape)} varies over batch and heads, which this site merges"
    return None


def _output_problem(ctx: GraphContext, site: AttentionSite) -> str | None:
    """The op's [B, H, N, Dv] must map onto the replaced value by a row-major re-grouping."""
    assert site.q is not None and site.v is not None
    want = ctx.hint_shape(site.anchor) or ()
    b, h, n, _ = site.q.hint
    have = (b, h, n, site.v.hint[3])
    if len(want) == 3 and tuple(want) == (b * h, n, have[3]):
        return None
    if len(want) == 4 and (tuple(want) == have or all(isinstance(d, int) for d in ctx.shape(site.anchor) or ())):
        if math.prod(want) == math.prod(have) and tuple(want[-2:]) == have[-2:]:
            return None
    return f"the attention output {list(want)} does not match the op's {list(have)}"


def _min_seq_len_reason(n: Any, minimum: int, site: AttentionSite) -> str | None:
    if minimum <= 0:
        return None
    if isinstance(n, int):
        return f"sequence length {n} < min_seq_len {minimum}" if n < minimum else None
    bounds = size_range(n)
    if bounds is None:
        return None
    lower, upper = bounds
    if upper is not None and upper < minimum:
        return f"sequence length {n} <= {upper} < min_seq_len {minimum}"
    if lower < minimum:
        site.notes.append(
            f"dynamic length {n} in [{lower}, {upper if upper is not None else 'inf'}] includes lengths below min_seq_len {minimum}; "
            "they run the delta op too (dense attention whenever N <= window or N <= tail)"
        )
    return None


def site_report(
    index: int, site: AttentionSite, reason: str | None, plan: MaskPlan | None
) -> SiteReport:
    path = site.module
    report = SiteReport(
        index=index,
        module=path,
        module_type=module_type(site.anchor),
        layer=layer_index(path),
        form=site.form,
        node=site.anchor.name,
        converted=reason is None,
        reason=reason,
        scale=site.scale,
        notes=list(site.notes),
    )
    q, k, v = site.q, site.k, site.v
    if q is not None and k is not None and v is not None:
        report.q_shape = [_size(d) for d in q.shape]
        report.k_shape = [_size(d) for d in k.shape]
        report.v_shape = [_size(d) for d in v.shape]
        report.heads = _size(q.shape[1])
        report.kv_heads = _size(k.shape[1])
        report.kv_repeat = k.repeat
        report.merged_heads = q.merged
    if plan is not None:
        report.causal = plan.causal
        report.mask = plan.kind.value
        report.mask_note = plan.note
    return report


def default_scale(head_dim: Any) -> float | None:
    """SDPA's default scale ``1/sqrt(D)``, or None for a symbolic head dim."""
    return 1.0 / math.sqrt(head_dim) if isinstance(head_dim, int) else None
