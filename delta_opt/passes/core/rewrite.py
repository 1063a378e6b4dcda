"""Write ``delta_opt::delta_attention`` into a graph in place of a matched site.

New nodes get ``meta["val"]`` computed under the graph's fake mode (so ``torch.export``, the
ONNX exporter and later passes see shapes) and the anchor's ``nn_module_stack`` and
``stack_trace`` (so they are attributed to the attention module they replace). Only ops of the
core ATen set are added around the op, so a decomposed program stays decomposed.
"""

from __future__ import annotations

from functools import reduce
from typing import Any

import torch
from torch.fx import GraphModule, Node
from torch.fx.node import map_arg

from ...config import DeltaConfig
from .graph import GraphContext, layer_index
from .masks import MaskPlan, MaskTerm
from .operands import Operand
from .site import AttentionSite

__all__ = ["Emitter", "RewriteError", "emit_site", "prune"]

aten = torch.ops.aten
OP = torch.ops.delta_opt.delta_attention.default
_ASSERTS = {aten._assert_tensor_metadata.default} if hasattr(aten, "_assert_tensor_metadata") else set()
_COPIED_META = ("nn_module_stack", "stack_trace", "source_fn_stack")


class RewriteError(Exception):
    """The op could not be put in place of a site; the graph was left as it was."""


class Emitter:
    """Inserts nodes before ``anchor``, with shapes and the anchor's module attribution."""

    def __init__(self, gm: GraphModule, anchor: Node):
        self.graph = gm.graph
        self.anchor = anchor
        self.created: list[Node] = []
        val = anchor.meta.get("val")
        if isinstance(val, (tuple, list)):
            val = val[0]
        self.fake_mode = getattr(val, "fake_mode", None)

    def call(self, target: Any, args: tuple, kwargs: dict | None = None) -> Node:
        kwargs = kwargs or {}
        with self.graph.inserting_before(self.anchor):
            node = self.graph.call_function(target, args, kwargs)
        self.created.append(node)
        fake_args = map_arg(args, lambda n: n.meta["val"])
        fake_kwargs = map_arg(kwargs, lambda n: n.meta["val"])
        if self.fake_mode is not None:
            with self.fake_mode:
                node.meta["val"] = target(*fake_args, **fake_kwargs)
        else:
            node.meta["val"] = target(*fake_args, **fake_kwargs)
        for key in _COPIED_META:
            if key in self.anchor.meta:
                node.meta[key] = self.anchor.meta[key]
        return node

    def size(self, node: Node, dim: int) -> int | Node:
        """Size ``dim`` of ``node``: an int, or a ``sym_size`` node for a dynamic one."""
        d = node.meta["val"].shape[dim]
        return d if isinstance(d, int) else self.call(aten.sym_size.int, (node, dim))

    def operand(self, op: Operand) -> Node:
        x = op.node
        if op.transpose:
            x = self.call(aten.transpose.int, (x, -2, -1))
        if op.merged:
            x = self.call(aten.unsqueeze.default, (x, 0))
        return x

    def mask(self, terms: tuple[MaskTerm, ...], q: Operand) -> Node | None:
        """One ``attn_mask`` for the op from the site's terms: bool if all are bool, else additive."""
        if not terms:
            return None
        parts = [(self._term(t, q), t.kind) for t in terms]
        if len(parts) == 1:
            return parts[0][0]
        if all(kind == "bool" for _, kind in parts):
            return reduce(lambda a, b: self.call(aten.logical_and.default, (a, b)), (p for p, _ in parts))
        dtype = next(p.meta["val"].dtype for p, kind in parts if kind == "additive")
        additive = []
        for part, kind in parts:
            if kind == "bool":
                zero = self.call(aten.scalar_tensor.default, (0.0,), {"dtype": dtype})
                blocked = self.call(aten.scalar_tensor.default, (float("-inf"),), {"dtype": dtype})
                part = self.call(aten.where.self, (part, zero, blocked))
            additive.append(part)
        return reduce(lambda a, b: self.call(aten.add.Tensor, (a, b)), additive)

    def _term(self, term: MaskTerm, q: Operand) -> Node:
        m = term.node
        if term.kind == "bool" and not term.keep:
            m = self.call(aten.logical_not.default, (m,))
        if term.kind == "additive":
            if term.factor != 1.0:
                m = self.call(aten.mul.Tensor, (m, term.factor))
            m = self._blocked_as_inf(m)
        shape = m.meta["val"].shape
        if term.scores_rank == 3 and not q.merged and len(shape) == 3 and shape[0] != 1:
            # [B*H, Nq, Nk] of merged scores, for an op that sees [B, H, N, D]: split the heads out.
            sizes = [self.size(q.node, 0), self.size(q.node, 1), self.size(m, 1), self.size(m, 2)]
            m = self.call(aten.view.default, (m, sizes))
        return m

    def _blocked_as_inf(self, m: Node) -> Node:
        """Entries at or below ``finfo.min / 2`` as -inf.

        Models write "blocked" as the dtype's most negative value to keep softmax free of NaN. The
        op reads only -inf as blocked: a row whose keys are all at ``finfo.min`` would otherwise
        count as having keys, and as an anchor it would leak its (meaningless) uniform average
        into the rows it corrects. With -inf such a row is empty and outputs zeros, as the spec says.
        """
        dtype = m.meta["val"].dtype
        blocked = self.call(aten.le.Scalar, (m, torch.finfo(dtype).min / 2))
        neg_inf = self.call(aten.scalar_tensor.default, (float("-inf"),), {"dtype": dtype})
        return self.call(aten.where.self, (blocked, neg_inf, m))

    def output(self, out: Node, q: Operand) -> Node:
        """The op's ``[B, H, N, Dv]`` in the anchor's layout (``[B*H, N, Dv]`` for merged sites)."""
        want = self.anchor.meta["val"]
        if isinstance(want, (tuple, list)):
            want = want[0]
        if want.dim() == 4:
            if tuple(want.shape) != tuple(out.meta["val"].shape):
                out = self.call(aten.view.default, (out, list(want.shape)))  # static: see site._output_problem
        elif q.merged:
            out = self.call(aten.squeeze.dims, (out, [0]))
        else:
            out = self.call(aten.view.default, (out, [-1, self.size(out, 2), self.size(out, 3)]))
        return self._strided_like(out, want)

    def _strided_like(self, out: Node, want: torch.Tensor) -> Node:
        """``out`` laid out in memory like ``want``: a decomposed program may ``view`` a backend
        kernel's output in ways only its strides allow (flash attention returns [B, N, H, D] memory)."""
        sizes = [GraphContext.size(d) for d in want.shape]
        strides = [GraphContext.size(d) for d in want.stride()]
        order = sorted(range(len(sizes)), key=lambda i: (-strides[i], i))
        if all(sizes[i] == 1 or i == j for j, i in enumerate(order)):
            return out  # already row-major
        inverse = sorted(range(len(order)), key=order.__getitem__)
        out = self.call(aten.permute.default, (out, order))
        out = self.call(aten.clone.default, (out,), {"memory_format": torch.contiguous_format})
        return self.call(aten.permute.default, (out, inverse))


def emit_site(gm: GraphModule, site: AttentionSite, plan: MaskPlan, config: DeltaConfig) -> Node:
    """Insert the op for ``site`` and make every user of its anchor read the op's output."""
    assert site.q is not None and site.k is not None and site.v is not None and site.scale is not None
    em = Emitter(gm, site.anchor)
    try:
        q, k, v = em.operand(site.q), em.operand(site.k), em.operand(site.v)
        mask = em.mask(plan.terms, site.q)
        # A calibrated layer plan applies per query head, so only where the heads are known.
        heads = site.q.shape[1] if not site.q.merged and isinstance(site.q.shape[1], int) else None
        layer_kwargs = config.op_kwargs(layer_index(site.module), heads)
        kwargs = {"causal": plan.causal, "scale": float(site.scale), **layer_kwargs}
        op = em.call(OP, (q, k, v, mask), kwargs)  # the op's own checks run here, on fake tensors
        out = em.output(op, site.q)
    except Exception as e:  # nothing is wired in yet: take the new nodes out again
        for node in reversed(em.created):
            em.graph.erase_node(node)
        raise RewriteError(f"{type(e).__name__}: {e}") from e
    site.anchor.replace_all_uses_with(out)
    return op


def prune(gm: GraphModule, regions: set[Node]) -> None:
    """Drop what the replaced sites left behind: their metadata asserts, then dead code."""
    # An assert keeps its subject alive; drop it once nothing else reads the subject, which can
    # take several rounds (softmax -> cast -> product: the cast dies first, then the softmax).
    changed = True
    while changed:
        changed = gm.graph.eliminate_dead_code()
        for node in list(gm.graph.nodes):
            if node.op != "call_function":
                continue
            if node.target in _ASSERTS and node.args and node.args[0] in regions:
                if all(u.target in _ASSERTS for u in node.args[0].users):
                    gm.graph.erase_node(node)
                    changed = True
            elif node in regions and not node.users:
                # fx keeps ops tagged random (SDPA backends, for their dropout) even when unused;
                # a converted site's own nodes are known dead.
                gm.graph.erase_node(node)
                changed = True
    gm.graph.lint()
    gm.recompile()
