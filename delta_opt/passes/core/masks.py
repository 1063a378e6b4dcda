"""Masks of an attention site: what they are, and when they are plainly causal.

A site carries zero or more mask terms: bool tensors (True = may attend, or inverted for
``masked_fill``) and additive float tensors (0 = attend, -inf or a huge negative = blocked, other
values = a bias). The op takes them as ``attn_mask``. When the terms can be shown to be exactly
the causal pattern (or to hide nothing), the op gets ``causal=True`` (or nothing) instead, which
keeps the N x N mask out of the converted program.

"Shown" means evaluated: the terms must be computable from fixed values and sizes alone (an
``arange``-built mask, a ``tril`` buffer) and, at every length tried, equal ``j <= i`` with
additive entries of exactly 0 or <= ``finfo.min / 2``. With a static length the traced length is
the only one the program accepts, so one evaluation is a proof. With a dynamic length the terms
are evaluated at the example length and a few around it, at the range's bounds (capped at
:data:`PROOF_LENGTH_CAP`) and just above every integer constant the mask sub-graph uses, because a window or chunk size is
what makes a mask look causal at short lengths and not at long ones; a constant whose
neighbourhood exceeds the cap leaves the mask unproven and passed through.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from functools import reduce
from typing import Any, Literal

import sympy
import torch
from torch.fx import Node
from torch.fx.node import map_aggregate

from .graph import GraphContext, NotConstant, size_range

__all__ = ["MaskKind", "MaskPlan", "MaskTerm", "PROOF_LENGTH_CAP", "plan_mask"]

# Longest sequence length at which a dynamic-length mask is evaluated for the causal proof
# (an N x N bool mask per batch row at 4097 is ~17 MB).
PROOF_LENGTH_CAP = 4097


class MaskKind(str, enum.Enum):
    """What the op receives for a site's mask."""

    NONE = "none"  # no mask (or one proved to hide nothing)
    CAUSAL = "causal"  # causal=True, no attn_mask
    BOOL = "bool"  # attn_mask: bool, True = may attend
    ADDITIVE = "additive"  # attn_mask: float added to the scores


@dataclass(frozen=True)
class MaskTerm:
    """One mask applied to a site's scores.

    Attributes:
        node: the mask tensor in the graph.
        kind: ``"bool"`` or ``"additive"``.
        keep: for bool, whether True in ``node`` means "may attend" (``where``/SDPA) or
            "blocked" (``masked_fill``).
        factor: for additive, the positive constant the mask is scaled by after it was added.
        scores_rank: rank of the scores the mask was applied to (3: batch x heads merged).
    """

    node: Node
    kind: Literal["bool", "additive"]
    keep: bool = True
    factor: float = 1.0
    scores_rank: int = 4


@dataclass(frozen=True)
class MaskPlan:
    """The op's view of a site's masks: ``causal`` flag, the terms to pass, and how that was decided."""

    kind: MaskKind
    causal: bool
    terms: tuple[MaskTerm, ...]
    note: str = ""


def plan_mask(ctx: GraphContext, terms: tuple[MaskTerm, ...], *, causal: bool, seq_len: Any) -> MaskPlan:
    """Decide what the op gets for ``terms`` (plus an SDPA ``is_causal`` flag) at a self-attention
    site whose query/key length is ``seq_len`` (int or SymInt)."""
    # Every layer of a model usually reads the same mask node: decide once.
    key = ("mask_plan", terms, causal, str(seq_len))
    if key not in ctx.cache:
        ctx.cache[key] = _plan_mask(ctx, terms, causal=causal, seq_len=seq_len)
    return ctx.cache[key]


def _plan_mask(ctx: GraphContext, terms: tuple[MaskTerm, ...], *, causal: bool, seq_len: Any) -> MaskPlan:
    if not terms:
        return MaskPlan(MaskKind.CAUSAL if causal else MaskKind.NONE, causal, ())
    additive = any(t.kind == "additive" for t in terms)
    passed = MaskKind.ADDITIVE if additive else MaskKind.BOOL
    # See rewrite.Emitter._blocked_as_inf.
    suffix = "; additive entries <= finfo.min/2 are passed as -inf" if additive else ""
    try:
        lengths, why_not = _proof_lengths(ctx, terms, seq_len)
    except NotConstant as e:
        lengths, why_not = None, str(e)
    if lengths is None:
        return MaskPlan(passed, causal, terms, f"passed through: {why_not}{suffix}")
    verdicts = set()
    for sizes in lengths:
        try:
            verdicts.add(_verdict(ctx, terms, sizes, seq_len))
        except NotConstant as e:
            return MaskPlan(passed, causal, terms, f"passed through: {e}{suffix}")
    if len(verdicts) != 1 or verdicts == {"mask"}:
        return MaskPlan(passed, causal, terms, f"passed through: not plainly causal{suffix}")
    (verdict,) = verdicts
    where = _describe(lengths, seq_len)
    if verdict == "causal" or causal:
        return MaskPlan(MaskKind.CAUSAL, True, (), f"proved causal {where}")
    return MaskPlan(MaskKind.NONE, False, (), f"proved to hide nothing {where}")


def _describe(lengths: list[dict | None], seq_len: Any) -> str:
    if lengths == [None]:
        return f"at the traced length {seq_len}"
    ns = sorted(next(iter(s.values())) for s in lengths if s)
    return f"at lengths {', '.join(map(str, ns))}"


def _proof_lengths(
    ctx: GraphContext, terms: tuple[MaskTerm, ...], seq_len: Any
) -> tuple[list[dict | None] | None, str]:
    """The sizes to evaluate at: [None] (the example) for a static length, else symbol -> length maps."""
    if isinstance(seq_len, int):
        return [None], ""
    expr = seq_len.node.expr
    if not isinstance(expr, sympy.Symbol):
        return None, f"the sequence length {seq_len} is not a plain dynamic dimension"
    hint = GraphContext.size(seq_len)
    lower, upper = size_range(seq_len) or (2, None)
    lower = max(2, lower)
    # The example, its neighbours, the range's ends (a mask sliced from a fixed-size buffer bounds
    # the range by the buffer's size) and lengths just past every constant in the mask's sub-graph.
    candidates = {hint, lower, hint + 1, 2 * hint + 1}
    if upper is not None:
        candidates.add(min(upper, PROOF_LENGTH_CAP))
    for c in _int_constants(ctx, terms):
        for n in (c + 1, c + 2):
            if upper is not None and n > upper:
                continue
            if n > PROOF_LENGTH_CAP:
                return None, f"the mask uses the constant {c}, beyond the proof limit {PROOF_LENGTH_CAP}"
            candidates.add(n)
    lengths = sorted(n for n in candidates if n >= lower and (upper is None or n <= upper))
    return [{expr: n} for n in lengths], ""


def _int_constants(ctx: GraphContext, terms: tuple[MaskTerm, ...]) -> set[int]:
    found: set[int] = set()

    def visit(x: Any) -> Any:
        if isinstance(x, int) and not isinstance(x, bool) and 2 < x < 2**31:
            found.add(x)
        return x

    for term in terms:
        for node in ctx.ancestors(term.node):
            map_aggregate(node.args, visit)
            map_aggregate(dict(node.kwargs), visit)
    return found


def _verdict(ctx: GraphContext, terms: tuple[MaskTerm, ...], sizes: dict | None, seq_len: Any) -> str:
    """"causal", "none" or "mask" for the terms evaluated at ``sizes``."""
    n = ctx.size(seq_len, sizes)
    allowed = []
    for term in terms:
        value = ctx.evaluate(term.node, sizes)
        if not isinstance(value, torch.Tensor):
            return "mask"
        a = _allowed(term, value)
        if a is None:
            return "mask"
        allowed.append(a)
    combined = reduce(torch.logical_and, allowed)
    if combined.dim() < 2:
        combined = combined.reshape((1,) * (2 - combined.dim()) + tuple(combined.shape))
    try:
        combined = combined.expand(*combined.shape[:-2], n, n)
    except RuntimeError:
        return "mask"
    if bool(combined.all()):
        return "none"
    tril = torch.ones(n, n, dtype=torch.bool).tril()
    return "causal" if bool((combined == tril).all()) else "mask"


def _allowed(term: MaskTerm, value: torch.Tensor) -> torch.Tensor | None:
    """Where the term lets a query see a key, or None if it is more than a yes/no mask."""
    if term.kind == "bool":
        if value.dtype != torch.bool:
            return None
        return value if term.keep else ~value
    if not value.dtype.is_floating_point or term.factor <= 0:
        return None
    zero = value == 0
    blocked = value <= torch.finfo(value.dtype).min / 2  # -inf included
    if not bool((zero | blocked).all()):
        return None  # a bias (ALiBi, relative positions): not a mask
    return zero
