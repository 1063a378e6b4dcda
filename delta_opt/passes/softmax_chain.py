"""Pass: attention written out as a softmax chain -> ``delta_opt::delta_attention``.

The chain, read from each softmax outwards, is a small grammar rather than a list of patterns::

    scores  := product(q, k^T) | scores . step
    step    := cast | layout (leading dims only) | * c | / c | + mask | + row-constant
             | masked_fill(m, -inf) | where(m, ., -inf) | where(m, -inf, .)
    weights := softmax(scores, -1) . (cast | eval dropout | clone | layout | safe-softmax zeroing)*
    site    := product(weights, v)

``product`` is ``matmul``, ``bmm``, ``einsum`` (a batched ``A @ B`` or ``A @ B^T``) or
``baddbmm``; scaling may also sit on q or k before the product (folded by :mod:`.core.operands`).
This covers transformers' eager attention (fp32 softmax upcast included), ``nn.MultiheadAttention``
with ``need_weights=True``, and SDPA after ``run_decompositions()`` (``bmm`` on ``[B*H, N, D]``
views, ``_safe_softmax`` spelled out as ``where(all -inf, 0, softmax)``).

A softmax whose input is not such a product (a classifier head, an MoE router) is reported as
not attention; a site whose weights are also read elsewhere (returned attention weights) is
reported and left dense.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Iterator

import torch
from torch.fx import GraphModule, Node

from ..config import DeltaConfig
from .core.convert import apply_sites
from .core.graph import GraphContext
from .core.masks import MaskTerm
from .core.operands import constant_factor, regroups_leading_dims, resolve_qkv, scalar_value
from .core.ops import CASTS, PRODUCTS, SOFTMAX, VIEWS, is_op
from .core.site import AttentionSite, Unmatched
from .report import Report

__all__ = ["convert_softmax_attention", "find_softmax_sites"]

aten = torch.ops.aten
_ASSERTS = {aten._assert_tensor_metadata.default} if hasattr(aten, "_assert_tensor_metadata") else set()
_MASKED_FILL = {aten.masked_fill.Scalar, aten.masked_fill.Tensor}
_WHERE = {aten.where.self, aten.where.ScalarSelf, aten.where.ScalarOther, aten.where.Scalar}
_SHIFT = {aten.add.Tensor: 1.0, aten.sub.Tensor: -1.0}
_MAX_DEPTH = 40


def convert_softmax_attention(gm: GraphModule, config: DeltaConfig, *, context: GraphContext | None = None) -> Report:
    """Rewrite every convertible softmax-attention chain of ``gm`` in place; report every site found
    and every softmax that was not taken for attention (with the reason)."""
    ctx = GraphContext.from_graph_module(gm) if context is None else context
    return apply_sites(gm, ctx, config, find_softmax_sites(ctx, gm))


def find_softmax_sites(ctx: GraphContext, gm: GraphModule) -> Iterator[AttentionSite | Unmatched]:
    for node in gm.graph.nodes:
        if is_op(node, SOFTMAX):
            yield _match(ctx, node)


# ---- scores: from the softmax back to the q.k^T product ------------------------------------


@dataclass
class _Scores:
    """The q.k^T product and the steps from it to the softmax, in that order."""

    product: Node
    steps: list[tuple[str, Any]] = field(default_factory=list)
    chain: list[Node] = field(default_factory=list)  # product -> softmax input, product excluded

    def then(self, node: Node, step: tuple[str, Any] | None) -> "_Scores":
        self.chain.append(node)
        if step is not None:
            self.steps.append(step)
        return self


def _rank(node: Node) -> int:
    return node.meta["val"].dim()


def _blocking(value: float | None, dtype: torch.dtype) -> bool:
    """A fill value that hides a key: -inf, or at most half the dtype's most negative value."""
    return value is not None and (value == float("-inf") or value <= torch.finfo(dtype).min / 2)


def _walk_scores(ctx: GraphContext, node: Any, depth: int = 0) -> _Scores | str:
    if depth > _MAX_DEPTH:
        return "the chain before the softmax is too long"
    if not isinstance(node, Node) or node.op != "call_function":
        what = f"{node.op} {node.name}" if isinstance(node, Node) else repr(node)
        return f"the softmax input comes from {what}, not from a q.k^T product"
    target = node.target
    if target in PRODUCTS:
        return _Scores(node)
    if target in CASTS or target in VIEWS:
        inner = _walk_scores(ctx, node.args[0], depth + 1)
        return inner if isinstance(inner, str) else inner.then(node, None)
    factor = constant_factor(ctx, node)
    if factor is not None:
        inner = _walk_scores(ctx, factor[0], depth + 1)
        return inner if isinstance(inner, str) else inner.then(node, ("scale", factor[1]))
    if target in _SHIFT:
        return _walk_shift(ctx, node, depth)
    if target in _MASKED_FILL:
        x, m, value = node.args[:3]
        fill = scalar_value(ctx, value)
        if not _blocking(fill, node.meta["val"].dtype):
            return f"{node.name} fills with {value!r}, which is not -inf: not a mask the op can take"
        inner = _walk_scores(ctx, x, depth + 1)
        term = MaskTerm(m, "bool", keep=False, scores_rank=_rank(node))
        return inner if isinstance(inner, str) else inner.then(node, ("mask", term))
    if target in _WHERE:
        cond, a, b = node.args[:3]
        dtype = node.meta["val"].dtype
        for x, other, keep in ((a, b, True), (b, a, False)):
            if isinstance(x, Node) and _blocking(scalar_value(ctx, other), dtype):
                inner = _walk_scores(ctx, x, depth + 1)
                if isinstance(inner, str):
                    return inner
                return inner.then(node, ("mask", MaskTerm(cond, "bool", keep=keep, scores_rank=_rank(node))))
        return f"{node.name} selects between two tensors, not between the scores and -inf"
    return f"the scores pass through {target} ({node.name}), which is not part of attention"


def _walk_shift(ctx: GraphContext, node: Node, depth: int) -> _Scores | str:
    """``scores + m`` / ``scores - m``: an additive mask, or a per-row constant softmax ignores."""
    alpha = node.kwargs.get("alpha", 1)
    if alpha != 1:
        return f"{node.name} adds with alpha={alpha}"
    a, b = node.args[:2]
    sign = _SHIFT[node.target]  # type: ignore[index]
    orders = [(a, b), (b, a)] if sign > 0 else [(a, b)]
    failure = None
    for x, m in orders:
        if not isinstance(x, Node):
            continue
        inner = _walk_scores(ctx, x, depth + 1)
        if isinstance(inner, str):
            failure = failure or inner  # the first operand's story is the likelier one
            continue
        shape = ctx.hint_shape(m) if isinstance(m, Node) else ()
        if not isinstance(m, Node) or not shape or shape[-1] == 1:
            return inner.then(node, None)  # the same shift for every key of a row
        term = MaskTerm(m, "additive", factor=sign, scores_rank=_rank(node))
        return inner.then(node, ("mask", term))
    return failure or f"neither operand of {node.name} is a q.k^T product"


# ---- weights: from the softmax forward to the product with v ------------------------------


def _safe_softmax_tail(softmax: Node, users: list[Node]) -> tuple[Node, set[Node]] | None:
    """``where(all keys -inf, 0, softmax)``, as ``_safe_softmax`` decomposes, or None.

    The condition must be ``~any(scores != -inf, -1)`` of this softmax's own input: rows with no
    visible key become zeros, which is what the op does for them too.
    """
    if len(users) != 2:
        return None
    fills = [u for u in users if u.target in (aten.full_like.default, aten.zeros_like.default) and u.args[0] is softmax]
    wheres = [u for u in users if u.target is aten.where.self and len(u.args) == 3 and u.args[2] is softmax]
    if not fills or not wheres:
        return None
    fill, where = fills[0], wheres[0]
    if where.args[1] is not fill or set(fill.users) != {where}:
        return None
    if fill.target is aten.full_like.default and fill.args[1] != 0:
        return None
    cond = where.args[0]
    chain = []
    for target in (aten.logical_not.default, aten.any.dim, aten.logical_not.default, aten.eq.Scalar):
        if not isinstance(cond, Node) or cond.target is not target:
            return None
        chain.append(cond)
        cond = cond.args[0]
    any_node, eq_node = chain[1], chain[3]
    if any_node.args[1] not in (-1, _rank(any_node) - 1) or eq_node.args[1] != float("-inf"):
        return None
    if eq_node.args[0] is not softmax.args[0]:
        return None
    return where, {fill, where, *chain}


def _continues(ctx: GraphContext, user: Node, node: Node) -> bool:
    """Whether ``user`` carries the attention weights ``node`` towards the product with v."""
    if user.op != "call_function" or not user.args:
        return False
    if user.target in PRODUCTS:
        return _weights_operand(user) is node
    if user.args[0] is not node:
        return False
    return user.target in CASTS or user.target in VIEWS or user.target is aten.dropout.default


def _weights_operand(product: Node) -> Any:
    if product.target is aten.einsum.default:
        operands = product.args[1]
        return operands[0] if isinstance(operands, (list, tuple)) and operands else None
    if product.target is aten.baddbmm.default:
        return None
    return product.args[0]


def _walk_weights(ctx: GraphContext, softmax: Node) -> tuple[Node, list[Node], set[Node], str | None] | str:
    """``(product with v, chain from the softmax to it, all nodes on the way, problem)``, or why
    there is no such product."""
    node, chain, nodes, problem = softmax, [], set(), None
    for _ in range(_MAX_DEPTH):
        users = [u for u in node.users if u.target not in _ASSERTS]
        if node is softmax:
            tail = _safe_softmax_tail(softmax, users)
            if tail is not None:
                users = [tail[0]]
                nodes |= tail[1]
        onward = [u for u in users if u in nodes or _continues(ctx, u, node)]
        others = [u for u in users if u not in onward]
        if others or len(onward) > 1:
            names = ", ".join(u.name for u in (others or onward[1:]))
            problem = problem or f"the attention weights are also used by {names} (e.g. returned as attention weights)"
        if not onward:
            return f"the softmax output is not multiplied by values (used by {', '.join(u.name for u in users) or 'nothing'})"
        nxt = onward[0]
        nodes.add(nxt)
        if nxt.target in PRODUCTS:
            return nxt, chain, nodes, problem
        chain.append(nxt)
        if nxt.target is aten.dropout.default and nxt.args[2] and nxt.args[1] != 0:
            problem = problem or f"dropout p={nxt.args[1]} is active (training mode): call model.eval() before converting"
        node = nxt
    return "the chain after the softmax is too long"


# ---- products -----------------------------------------------------------------------------


def _einsum_kind(equation: str) -> str | None:
    """``"mm"`` for a batched ``A @ B``, ``"mm_bt"`` for ``A @ B^T``, None for anything else."""
    eq = equation.replace(" ", "").replace("...", "#")
    if eq.count("->") != 1:
        return None
    lhs, out = eq.split("->")
    terms = lhs.split(",")
    if len(terms) != 2:
        return None
    a, b = terms
    if not (len(a) == len(b) == len(out) >= 3 and a[:-2] == b[:-2] == out[:-2]):
        return None
    batch, (i, d) = a[:-2], a[-2:]
    if len({i, d, *b[-2:]}) != 3 or any(c in batch for c in a[-2:] + b[-2:]):
        return None
    if b[-2] == d and out[-2:] == i + b[-1]:
        return "mm"
    if b[-1] == d and out[-2:] == i + b[-2]:
        return "mm_bt"
    return None


def _product_operands(product: Node) -> tuple[Any, Any, bool, list[tuple[str, Any]]] | str:
    """``(a, b, b_is_transposed, extra steps)`` of a product computing ``a @ b`` (or ``a @ b^T``)."""
    target = product.target
    if target in (aten.matmul.default, aten.bmm.default):
        return product.args[0], product.args[1], True, []
    if target is aten.einsum.default:
        equation, operands = product.args[0], product.args[1]
        kind = _einsum_kind(equation) if isinstance(equation, str) else None
        if kind is None or len(operands) != 2:
            return f"einsum {equation!r} is not a batched product over the last two axes"
        return operands[0], operands[1], kind == "mm", []
    if target is aten.baddbmm.default:
        inp, b1, b2 = product.args[:3]
        beta, alpha = product.kwargs.get("beta", 1), product.kwargs.get("alpha", 1)
        steps: list[tuple[str, Any]] = []
        if alpha != 1:
            steps.append(("scale", float(alpha)))
        if beta == 1 and isinstance(inp, Node):
            steps.append(("mask", MaskTerm(inp, "additive", scores_rank=_rank(product))))
        elif beta != 0:
            return f"baddbmm with beta={beta}"
        return b1, b2, True, steps
    return f"{target} is not a supported product"


def _match(ctx: GraphContext, softmax: Node) -> AttentionSite | Unmatched:
    rank = _rank(softmax)
    dim = softmax.args[1]
    if dim not in (-1, rank - 1):
        return Unmatched(softmax, f"softmax over dim {dim}, not the last (key) axis")
    scores = _walk_scores(ctx, softmax.args[0])
    if isinstance(scores, str):
        return Unmatched(softmax, scores)
    qk = _product_operands(scores.product)
    if isinstance(qk, str):
        return Unmatched(softmax, qk)
    q_op, k_op, k_transposed, extra = qk
    down = _walk_weights(ctx, softmax)
    if isinstance(down, str):
        return Unmatched(softmax, down)
    pv, weight_chain, weight_nodes, problem = down
    pv_ops = _product_operands(pv)
    site = AttentionSite(
        str(scores.product.target).split(".")[-2], pv, nodes={*scores.chain, scores.product, *weight_nodes, softmax, pv}
    )
    if not regroups_leading_dims(ctx, scores.product, scores.chain + [softmax] + weight_chain):
        site.problem = problem or "the scores are re-arranged between the products, not only re-grouped"
        return site
    if isinstance(pv_ops, str) or not pv_ops[2] or pv_ops[3]:
        site.problem = problem or f"the weights are multiplied by values in an unsupported way ({pv.name})"
        return site
    v_op = pv_ops[1]
    gqa = scores.product.target is not aten.bmm.default  # matmul/einsum broadcast one kv head over many
    if not all(isinstance(x, Node) for x in (q_op, k_op, v_op)):
        site.problem = problem or "an operand is not a tensor"
        return site
    resolved = resolve_qkv(ctx, q_op, k_op, v_op, k_transposed=k_transposed, gqa=gqa)
    if isinstance(resolved, str):
        site.problem = problem or f"operands not understood: {resolved}"
        return site
    site.q, site.k, site.v = resolved
    scale, terms = 1.0, []
    for kind, payload in extra + scores.steps:
        if kind == "scale":
            if payload < 0 and terms:
                problem = problem or "a negative scale follows a mask"
            scale *= payload
            terms = [dataclasses.replace(t, factor=t.factor * payload) if t.kind == "additive" else t for t in terms]
        else:
            terms.append(payload)
            site.nodes.add(payload.node)
    site.scale = scale * site.q.scale * site.k.scale
    site.mask_terms = tuple(terms)
    site.problem = problem
    return site
