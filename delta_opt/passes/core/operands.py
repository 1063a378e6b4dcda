"""Find the q, k and v an attention site really reads, through views, repeats and scales.

The tensor a product or an SDPA call receives is often a re-arrangement of the one the op
should get: a 3-D ``[B*H, N, D]`` view of ``[B, H, N, D]`` (decomposed matmul, ``bmm``), a
transpose (``k^T``), grouped-query K/V repeated per query head (``expand`` + ``reshape`` in
transformers' ``repeat_kv``, ``repeat_interleave``, or its decomposition into ``expand`` +
``clone`` + ``view``), or a copy multiplied by a constant (``q * scale`` before the product).

Rather than listing those chains as patterns, :func:`resolve` walks back from the operand
through the layout ops of :data:`~.ops.LAYOUT` and constant scalings, and tests each tensor on
the way as a candidate source (4-D ones first, deepest first): it *replays* the walked ops on a tensor of
element ids shaped like the candidate and accepts the candidate when the result equals the
expected re-arrangement (identity, head repeat ``h -> h // g``, merge of batch and heads,
transpose). That check is exact, so any chain of views that means the same thing is accepted
and any that does not (a tiled ``repeat`` instead of an interleaved one, a permuted head order)
is rejected; the candidate closest to the operand always passes, so a site never fails just
because its K/V cannot be un-repeated.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch.fx import Node

from .graph import GraphContext, NotConstant
from .ops import IDENTITY, LAYOUT, REPLAY_AS, VIEWS

__all__ = ["Operand", "constant_factor", "regroups_leading_dims", "resolve", "resolve_qkv", "scalar_value"]

aten = torch.ops.aten
_MUL = {aten.mul.Tensor, aten.mul.Scalar}
_DIV = {aten.div.Tensor, aten.div.Scalar}
_MAX_WALK = 48


@dataclass(frozen=True)
class Operand:
    """A tensor the op will read, as found behind a product/SDPA operand.

    Attributes:
        node: the graph node handed to the op.
        merged: ``node`` is 3-D ``[X, N, D]`` (batch and heads merged) and goes in as ``[1, X, N, D]``.
        transpose: ``node`` holds ``k^T`` and goes in transposed back (no layout chain gave k).
        shape: ``[B, H, N, D]`` as the op sees it (ints or SymInts); ``hint``: the example's sizes.
        repeat: how many times each head of ``node`` is repeated in the operand (grouped-query K/V).
        scale: the product of the constant factors applied between ``node`` and the operand.
    """

    node: Node
    merged: bool
    transpose: bool
    shape: tuple[Any, Any, Any, Any]
    hint: tuple[int, int, int, int]
    repeat: int = 1
    scale: float = 1.0


def constant_factor(ctx: GraphContext, node: Node) -> tuple[Node, float] | None:
    """``(x, c)`` when ``node`` is ``x * c`` or ``x / c`` for a constant scalar ``c``, else None.

    ``c`` may be a Python number or a one-element tensor computed from fixed values (a
    ``torch.full([], sqrt(d))`` in GPT-2, a buffer); factors that read the caller's data are not
    constants.
    """
    if node.op != "call_function" or node.target not in _MUL | _DIV or len(node.args) != 2:
        return None
    a, b = node.args
    pairs = [(a, b)] if node.target in _DIV else [(a, b), (b, a)]
    for x, c in pairs:
        if not isinstance(x, Node) or not isinstance(x.meta.get("val"), torch.Tensor):
            continue
        value = scalar_value(ctx, c)
        if value is None or value == 0.0 or not math.isfinite(value):
            continue
        return x, (1.0 / value if node.target in _DIV else value)
    return None


def scalar_value(ctx: GraphContext, c: Any) -> float | None:
    """``c`` as a float when it is a number or a one-element tensor computed from fixed values."""
    if isinstance(c, bool):
        return None
    if isinstance(c, (int, float)):
        return float(c)
    if isinstance(c, Node):
        val = c.meta.get("val")
        if not isinstance(val, torch.Tensor) or val.numel() != 1:
            return None
        try:
            t = ctx.evaluate(c)
        except NotConstant:
            return None
        return float(t.reshape(()).item()) if isinstance(t, torch.Tensor) and t.numel() == 1 else None
    return None


def _walk(ctx: GraphContext, operand: Node, scales: bool) -> tuple[list[Node], dict[Node, float]]:
    """Nodes from ``operand`` back through layout ops (and constant scalings), operand first."""
    path, factors = [operand], {}
    node = operand
    while len(path) < _MAX_WALK and node.op == "call_function":
        if node.target in LAYOUT and node.args and isinstance(node.args[0], Node):
            node = node.args[0]
        else:
            found = constant_factor(ctx, node) if scales else None
            if found is None:
                break
            factors[node] = found[1]
            node = found[0]
        path.append(node)
    return path, factors


def _ids(shape: tuple[int, ...]) -> torch.Tensor:
    n = math.prod(shape)
    return torch.arange(n, dtype=torch.int32 if n < 2**31 else torch.int64).reshape(shape)


def _expected(shape: tuple[int, ...], g: int, op_rank: int, transposed: bool) -> torch.Tensor:
    """Element ids of a source of ``shape`` as the operand should hold them: heads repeated
    ``g`` times (``h -> h // g``), batch and heads merged for a 3-D operand, maybe transposed."""
    ids = _ids(shape)
    expected = ids.unsqueeze(0) if len(shape) == 3 else ids
    if g > 1:
        expected = expected.repeat_interleave(g, dim=1)
    if op_rank == 3:
        b, h, n, d = expected.shape
        expected = expected.reshape(b * h, n, d)
    return expected.transpose(-1, -2) if transposed else expected


def _signature(ctx: GraphContext, chain: list[Node], factors: dict[Node, float]) -> tuple:
    """What a replay of ``chain`` depends on: its ops and their concrete arguments."""
    return tuple(
        (node.target, repr(ctx.concrete(node.args[1:])), repr(ctx.concrete(dict(node.kwargs))))
        for node in chain
        if node not in factors
    )


def _replay(ctx: GraphContext, ids: torch.Tensor, chain: list[Node], factors: dict[Node, float]) -> torch.Tensor:
    x = ids
    for node in chain:
        if node in factors:
            continue  # a scaling moves no element
        target = REPLAY_AS.get(node.target, node.target)
        x = target(x, *ctx.concrete(node.args[1:]), **ctx.concrete(node.kwargs))  # type: ignore[operator]
    return x


def _is_float_tensor(node: Node) -> bool:
    val = node.meta.get("val")
    return isinstance(val, torch.Tensor) and val.dtype.is_floating_point


def resolve(
    ctx: GraphContext,
    operand: Node,
    *,
    transposed: bool = False,
    batch: int | None = None,
    heads: int | None = None,
    allow_repeat: bool = False,
    scales: bool = True,
) -> Operand | str:
    """The deepest source of ``operand`` that is a plain (possibly head-repeated) re-arrangement.

    Args:
        operand: what the product/SDPA reads: ``[B, Ho, N, D]`` or ``[B*Ho, N, D]``
            (``transposed``: last two dims swapped, i.e. ``k^T``).
        batch / heads: accept only sources with this batch size / head count (example sizes).
        allow_repeat: accept sources whose heads are repeated (``h -> h // g``) to make ``Ho``.
        scales: walk through multiplications by constants (for q and k, whose factors fold
            into the softmax scale; not for v, whose factor would scale the output).

    Returns:
        An :class:`Operand`, or a string saying why nothing fits.
    """
    op_shape = ctx.hint_shape(operand)
    if op_shape is None or not _is_float_tensor(operand):
        return f"{operand.name} is not a floating-point tensor"
    rank = len(op_shape)
    if rank not in (3, 4):
        return f"{operand.name} has rank {rank}; attention operands must be 3-D or 4-D"
    path, factors = _walk(ctx, operand, scales)
    # 4-D sources first (they carry the real heads), then merged 3-D ones; deepest first in each.
    order = sorted(range(len(path)), key=lambda i: (len(ctx.hint_shape(path[i]) or ()) != 4, -i))
    for i in order:
        try:
            found = _try_candidate(ctx, path, i, factors, op_shape, transposed, batch, heads, allow_repeat)
        except NotConstant:
            continue  # a view whose arguments are not sizes (e.g. a repeats tensor): not this one
        if found is not None:
            return found
    if transposed:
        # k^T made by something other than a layout op (k produced transposed): hand the op its transpose.
        shape = ctx.shape(operand)
        assert shape is not None
        merged = rank == 3
        sym = ((1,) + shape if merged else shape)[:2] + (shape[-1], shape[-2])
        hint = ((1,) + op_shape if merged else op_shape)[:2] + (op_shape[-1], op_shape[-2])
        if (batch is None or hint[0] == batch) and (heads is None or hint[1] == heads):
            return Operand(operand, merged, True, sym, hint)  # type: ignore[arg-type]
    return f"no source of {operand.name} matches the expected layout"


def _try_candidate(
    ctx: GraphContext,
    path: list[Node],
    i: int,
    factors: dict[Node, float],
    op_shape: tuple[int, ...],
    transposed: bool,
    batch: int | None,
    heads: int | None,
    allow_repeat: bool,
) -> Operand | None:
    cand = path[i]
    shape = ctx.hint_shape(cand)
    if shape is None or len(shape) not in (3, 4) or not _is_float_tensor(cand):
        return None
    merged = len(shape) == 3
    B, H, N, D = (1,) + shape if merged else shape
    if (batch is not None and B != batch) or (heads is not None and H != heads) or H == 0:
        return None
    if len(op_shape) == 4:
        if op_shape[0] != B:
            return None
        total = op_shape[1]
    else:
        if op_shape[0] % B:
            return None
        total = op_shape[0] // B
    if total % H or (total != H and not allow_repeat):
        return None
    g = total // H
    expected_shape = (B, total, N, D) if len(op_shape) == 4 else (B * total, N, D)
    if transposed:
        expected_shape = expected_shape[:-2] + (D, N)
    if tuple(expected_shape) != tuple(op_shape):
        return None
    chain = list(reversed(path[:i]))
    # Every layer of a model asks the same question: answer it once per chain signature.
    key = ("layout", shape, g, len(op_shape), transposed, _signature(ctx, chain, factors))
    if key not in ctx.cache:
        ids = _ids(shape)
        got = _replay(ctx, ids, chain, factors)
        expected = _expected(shape, g, len(op_shape), transposed)
        ctx.cache[key] = got.shape == expected.shape and torch.equal(got, expected)
    if not ctx.cache[key]:
        return None
    sym = ctx.shape(cand)
    assert sym is not None
    sym4 = (1,) + sym if merged else sym
    scale = math.prod(factors.get(n, 1.0) for n in path[:i])
    return Operand(cand, merged, False, sym4, (B, H, N, D), g, scale)  # type: ignore[arg-type]


def resolve_qkv(
    ctx: GraphContext, q_op: Node, k_op: Node, v_op: Node, *, k_transposed: bool, gqa: bool = False
) -> tuple[Operand, Operand, Operand] | str:
    """Resolve the three operands of one attention site consistently.

    q is taken as deep as it goes; k and v must then share its batch size and have equal head
    counts (if one un-repeats further than the other, both settle on the shallower level).
    ``gqa`` allows q itself to have more heads than the k/v operands (SDPA ``enable_gqa``).
    """
    q = resolve(ctx, q_op)
    if isinstance(q, str):
        return f"q: {q}"
    kv = _resolve_kv(ctx, k_op, v_op, q, k_transposed)
    if isinstance(kv, str) and not q.merged and q.hint[0] != 1 and len(ctx.hint_shape(q_op) or ()) == 3:
        # q lifted to [B, H, N, D] but k/v only exist merged: take q merged too.
        q2 = resolve(ctx, q_op, batch=1)
        if isinstance(q2, Operand):
            kv2 = _resolve_kv(ctx, k_op, v_op, q2, k_transposed)
            if isinstance(kv2, tuple):
                q, kv = q2, kv2
    if isinstance(kv, str):
        return kv
    k, v = kv
    dtypes = [op.node.meta["val"].dtype for op in (q, k, v)]
    if len(set(dtypes)) != 1:
        return f"q, k and v have different dtypes ({', '.join(map(str, dtypes))})"
    if k.hint[2] != v.hint[2]:
        return f"k and v have different lengths ({k.hint[2]} vs {v.hint[2]})"
    if k.hint[3] != q.hint[3]:
        return f"q and k have different head dims ({q.hint[3]} vs {k.hint[3]})"
    if q.hint[1] % k.hint[1]:
        return f"query heads ({q.hint[1]}) are not a multiple of kv heads ({k.hint[1]})"
    if not gqa and k.hint[1] * k.repeat != q.hint[1]:
        return f"k has {k.hint[1] * k.repeat} heads where q has {q.hint[1]}"
    return q, k, v


def _resolve_kv(
    ctx: GraphContext, k_op: Node, v_op: Node, q: Operand, k_transposed: bool
) -> tuple[Operand, Operand] | str:
    batch = q.hint[0]
    k = resolve(ctx, k_op, transposed=k_transposed, batch=batch, allow_repeat=True)
    v = resolve(ctx, v_op, batch=batch, allow_repeat=True, scales=False)
    if isinstance(k, str):
        return f"k: {k}"
    if isinstance(v, str):
        return f"v: {v}"
    if k.hint[1] != v.hint[1]:
        # One of them un-repeated further: settle both on the level with more heads.
        heads = max(k.hint[1], v.hint[1])
        k = resolve(ctx, k_op, transposed=k_transposed, batch=batch, heads=heads, allow_repeat=True)
        v = resolve(ctx, v_op, batch=batch, heads=heads, allow_repeat=True, scales=False)
        if isinstance(k, str) or isinstance(v, str):
            return "k and v are repeated differently"
    return k, v


def regroups_leading_dims(ctx: GraphContext, start: Node, chain: list[Node]) -> bool:
    """Whether ``chain`` (nodes applied one after the other from ``start``) re-groups only the
    leading dims of ``start`` in row-major order and keeps its last two axes.

    View ops are replayed on a ``meta`` tensor, which tracks strides without data, so the check
    costs nothing at any sequence length: the chain is such a re-grouping exactly when the result
    is a contiguous view at offset 0. Other nodes (casts, scalings, masks) must keep the shape.
    """
    shape = ctx.hint_shape(start)
    if shape is None or len(shape) < 2:
        return False
    x = torch.empty(shape, device="meta")
    for node in chain:
        if node.target in IDENTITY:
            continue
        if node.target in VIEWS:
            target = aten.view.default if node.target in (aten.reshape.default, aten._unsafe_view.default) else node.target
            try:
                x = target(x, *ctx.concrete(node.args[1:]), **ctx.concrete(node.kwargs))  # type: ignore[operator]
            except (RuntimeError, NotConstant):
                return False  # not expressible as a view of the scores
        elif ctx.hint_shape(node) != tuple(x.shape):
            return False
    return x.is_contiguous() and x.storage_offset() == 0 and tuple(x.shape[-2:]) == tuple(shape[-2:])
