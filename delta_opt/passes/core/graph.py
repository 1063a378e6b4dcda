"""What a pass needs to know about a traced graph beyond its nodes.

A :class:`GraphContext` says which placeholders carry the caller's data and which carry fixed
values (parameters, buffers, lifted constants), turns symbolic sizes into the traced example's
sizes, and evaluates sub-graphs that do not read the caller's data (a causal mask built from
``arange``, a scale stored as a 0-d tensor) to concrete tensors, optionally at other sequence
lengths than the traced one. Data placeholders are stood in for by ``meta`` tensors of the right
shape: anything that reads their values stays ``meta`` and is reported as data-dependent.
"""

from __future__ import annotations

import re
import weakref
from typing import Any, Iterable, Mapping

import sympy
import torch
from torch.fx import GraphModule, Node
from torch.fx.node import map_aggregate, map_arg

__all__ = ["GraphContext", "NotConstant", "finite_bound", "layer_index", "module_path", "module_type", "size_range"]

# Ops that read only the shape/dtype of their tensor argument: on a data placeholder they still
# give a data-independent result, so they run on an uninitialised real tensor of that shape.
_SHAPE_ONLY = {
    getattr(torch.ops.aten, name).default
    for name in ("new_ones", "new_zeros", "new_empty", "ones_like", "zeros_like", "empty_like")
    if hasattr(torch.ops.aten, name)
} | {torch.ops.aten.new_full.default, torch.ops.aten.full_like.default}


def finite_bound(x: Any) -> int | None:
    """A range bound as an int, or None for an infinite one (``int_oo`` claims to be finite)."""
    try:
        value = int(x)
    except (TypeError, ValueError, AttributeError):
        return None
    return value if abs(value) < 2**62 else None


def size_range(n: Any) -> tuple[int, int | None] | None:
    """``(lower, upper)`` of a dynamic size that is a plain symbol (upper None when unbounded), else None."""
    if not isinstance(n, torch.SymInt) or not isinstance(n.node.expr, sympy.Symbol):
        return None
    bounds = n.node.shape_env.var_to_range.get(n.node.expr)
    if bounds is None:
        return None
    return finite_bound(bounds.lower) or 0, finite_bound(bounds.upper)


class NotConstant(Exception):
    """A sub-graph cannot be evaluated without the caller's data; the message says why."""


def module_path(node: Node) -> str:
    """The innermost module a node was traced in (``model.layers.3.self_attn``), from ``nn_module_stack``."""
    stack = node.meta.get("nn_module_stack") or {}
    if not stack:
        return ""
    path = list(stack.values())[-1][0]
    return str(path)


def module_type(node: Node) -> str:
    """The class name of the innermost module of ``node`` (``LlamaAttention``), or ""."""
    stack = node.meta.get("nn_module_stack") or {}
    if not stack:
        return ""
    kind = list(stack.values())[-1][1]
    name = kind if isinstance(kind, str) else getattr(kind, "__qualname__", str(kind))
    return name.rsplit(".", 1)[-1]


def layer_index(path: str) -> int | None:
    """The first integer component of a module path (``model.layers.3.self_attn`` -> 3), or None."""
    for part in path.split("."):
        if re.fullmatch(r"\d+", part):
            return int(part)
    return None


class GraphContext:
    """Fixed values and data inputs of a graph, and evaluation of its data-independent parts.

    Args:
        gm: the graph module the passes rewrite.
        values: fixed values by placeholder node (parameters, buffers, constants).
        data: placeholders that carry the caller's inputs.
        max_nodes: the largest sub-graph :meth:`evaluate` will run (a mask builder is tens of
            nodes; a sub-graph of thousands is the model itself and reads data anyway).
    """

    def __init__(self, gm: GraphModule, values: Mapping[Node, Any], data: Iterable[Node], *, max_nodes: int = 2000):
        self.gm = gm
        self.values = dict(values)
        self.data = set(data)
        self.max_nodes = max_nodes
        self.position = {node: i for i, node in enumerate(gm.graph.nodes)}
        self._memo: dict[tuple[Node, tuple], Any] = {}
        self.cache: dict[Any, Any] = {}  # for results derived from evaluations (mask plans)
        self._sources: dict[Node, frozenset[Node]] | None = None

    @classmethod
    def from_exported(cls, ep: torch.export.ExportedProgram, gm: GraphModule | None = None) -> "GraphContext":
        """Context of ``gm`` (default: ``ep.graph_module``), whose placeholders follow ``ep``'s signature."""
        from torch.export.graph_signature import InputKind

        gm = ep.graph_module if gm is None else gm
        placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
        values, data = {}, []
        for node, spec in zip(placeholders, ep.graph_signature.input_specs):
            if spec.kind == InputKind.PARAMETER or (spec.kind == InputKind.BUFFER and spec.persistent is not False):
                values[node] = ep.state_dict[spec.target]
            elif spec.kind in (InputKind.BUFFER, InputKind.CONSTANT_TENSOR):
                values[node] = ep.constants[spec.target]
            elif spec.kind == InputKind.CUSTOM_OBJ:
                continue  # opaque script objects: neither data nor evaluable
            else:
                data.append(node)
        return cls(gm, values, data)

    @classmethod
    def from_graph_module(cls, gm: GraphModule) -> "GraphContext":
        """Context of a plain graph module: placeholders are data, ``get_attr`` nodes are fixed values."""
        values = {}
        for node in gm.graph.nodes:
            if node.op == "get_attr":
                obj: Any = gm
                for part in str(node.target).split("."):
                    obj = getattr(obj, part)
                values[node] = obj
        data = [n for n in gm.graph.nodes if n.op == "placeholder"]
        return cls(gm, values, data)

    # ---- sizes -----------------------------------------------------------------------------

    @staticmethod
    def size(value: Any, sizes: Mapping[sympy.Symbol, int] | None = None) -> Any:
        """``value`` with every SymInt/SymFloat/SymBool made concrete: the traced example's value,
        or the value at ``sizes`` (symbol -> int) for the symbols given there."""
        if isinstance(value, (torch.SymInt, torch.SymFloat, torch.SymBool)):
            # sympy substitution is slow and the same sizes come back often; symbols are only
            # meaningful within their shape environment, so the cache is kept per environment.
            cache = _SIZE_CACHE.setdefault(value.node.shape_env, {})
            key = (value.node.expr, tuple(sorted(sizes.items(), key=str)) if sizes else (), type(value))
            if key not in cache:
                cache[key] = _concrete(value, sizes)
            return cache[key]
        if isinstance(value, torch.Size):
            return tuple(GraphContext.size(d, sizes) for d in value)
        return value

    def concrete(self, arg: Any, sizes: Mapping[sympy.Symbol, int] | None = None) -> Any:
        """Node arguments with symbolic-size nodes replaced by their concrete values."""

        def value_of(node: Node) -> Any:
            val = node.meta.get("val")
            if isinstance(val, (torch.SymInt, torch.SymFloat, torch.SymBool, int, float, bool)):
                return self.size(val, sizes)
            raise NotConstant(f"argument {node.name} is not a size")

        return map_arg(arg, value_of)

    @staticmethod
    def shape(node: Node) -> tuple[Any, ...] | None:
        """The (possibly symbolic) shape of a tensor node, or None if it is not one."""
        val = node.meta.get("val") if isinstance(node, Node) else None
        return tuple(val.shape) if isinstance(val, torch.Tensor) else None

    def hint_shape(self, node: Node) -> tuple[int, ...] | None:
        shape = self.shape(node)
        return None if shape is None else tuple(self.size(d) for d in shape)

    # ---- provenance ----------------------------------------------------------------------

    def data_sources(self, node: Node) -> frozenset[Node]:
        """The data placeholders whose values ``node`` depends on."""
        if self._sources is None:
            sources: dict[Node, frozenset[Node]] = {}
            for n in self.gm.graph.nodes:
                if n in self.data:
                    sources[n] = frozenset([n])
                else:
                    acc: set[Node] = set()
                    for parent in n.all_input_nodes:
                        acc |= sources.get(parent, frozenset())
                    sources[n] = frozenset(acc)
            self._sources = sources
        return self._sources.get(node, frozenset())

    # ---- evaluation ----------------------------------------------------------------------

    def is_fixed(self, node: Node) -> bool:
        return node in self.values

    def evaluate(self, node: Node, sizes: Mapping[sympy.Symbol, int] | None = None) -> Any:
        """The value of ``node`` computed from fixed values only (at the example sizes, or at ``sizes``).

        Raises :class:`NotConstant` when it reads the caller's data, has side effects or random
        ops, or is larger than ``max_nodes``.
        """
        key = (node, tuple(sorted(((str(s), v) for s, v in (sizes or {}).items()))))
        if key in self._memo:
            result = self._memo[key]
            if isinstance(result, NotConstant):
                raise result
            return result
        try:
            result = self._evaluate(node, sizes)
        except NotConstant as e:
            self._memo[key] = e
            raise
        self._memo[key] = result
        return result

    def ancestors(self, node: Node) -> list[Node]:
        """``node`` and everything it depends on, in graph order (NotConstant past ``max_nodes``)."""
        seen = {node}
        stack = [node]
        while stack:
            for parent in stack.pop().all_input_nodes:
                if parent not in seen:
                    seen.add(parent)
                    if len(seen) > self.max_nodes:
                        raise NotConstant(f"{node.name} depends on more than {self.max_nodes} nodes")
                    stack.append(parent)
        return sorted(seen, key=self.position.__getitem__)

    def _evaluate(self, node: Node, sizes: Mapping[sympy.Symbol, int] | None) -> Any:
        env: dict[Node, Any] = {}
        for n in self.ancestors(node):
            env[n] = self._run(n, env, sizes)
        result = env[node]
        leaves = []
        map_aggregate(result, leaves.append)
        readers = sorted(p.name for p in self.data_sources(node))
        if any(isinstance(t, torch.Tensor) and t.device.type == "meta" for t in leaves):
            raise NotConstant(f"{node.name} depends on the values of input(s) {', '.join(readers) or '?'}")
        return result

    def _run(self, n: Node, env: dict[Node, Any], sizes: Mapping[sympy.Symbol, int] | None) -> Any:
        if n in self.values:
            return self.values[n]
        if n.op == "placeholder":
            val = n.meta.get("val")
            if isinstance(val, torch.Tensor):
                shape = [self.size(d, sizes) for d in val.shape]
                return torch.empty(shape, dtype=val.dtype, device="meta")
            if val is None:
                raise NotConstant(f"input {n.name} has no traced value")
            return self.size(val, sizes)
        if n.op not in ("call_function", "call_method"):
            raise NotConstant(f"{n.name} is a {n.op} node")
        target = n.target
        if isinstance(target, torch._ops.OpOverload):
            if torch.Tag.nondeterministic_seeded in target.tags:
                raise NotConstant(f"{n.name} is random ({target})")
            if target._schema.is_mutable:
                raise NotConstant(f"{n.name} mutates its inputs ({target})")
        elif isinstance(target, torch._ops.HigherOrderOperator):
            raise NotConstant(f"{n.name} is a control-flow operator ({target})")
        args = map_arg(n.args, env.__getitem__)
        kwargs = map_arg(n.kwargs, env.__getitem__)
        if target in _SHAPE_ONLY:
            args = map_aggregate(args, _materialise_meta)
        try:
            if n.op == "call_method":
                return getattr(args[0], target)(*args[1:], **kwargs)  # type: ignore[arg-type]
            return target(*args, **kwargs)  # type: ignore[operator]
        except NotConstant:
            raise
        except Exception as e:  # a meta/real device mix, an op without a meta kernel, ...
            readers = sorted(p.name for p in self.data_sources(n))
            why = f"reads input(s) {', '.join(readers)}" if readers else f"{type(e).__name__}: {str(e)[:120]}"
            raise NotConstant(f"cannot evaluate {n.name} ({why})") from None


_SIZE_CACHE: "weakref.WeakKeyDictionary[Any, dict[tuple, Any]]" = weakref.WeakKeyDictionary()


def _concrete(value: Any, sizes: Mapping[sympy.Symbol, int] | None) -> Any:
    expr = value.node.expr
    if sizes:
        expr = expr.xreplace({s: sympy.Integer(v) for s, v in sizes.items()})
    if expr.free_symbols:
        shape_env = value.node.shape_env
        hints = getattr(shape_env, "backed_var_to_val", None) or shape_env.var_to_val
        expr = expr.xreplace({s: hints[s] for s in expr.free_symbols if s in hints})
    if expr.free_symbols:
        raise NotConstant(f"size {value} has no example value")
    if isinstance(value, torch.SymInt):
        return int(expr)
    if isinstance(value, torch.SymFloat):
        return float(expr)
    return bool(expr)


def _materialise_meta(x: Any) -> Any:
    if isinstance(x, torch.Tensor) and x.device.type == "meta":
        return torch.empty(x.shape, dtype=x.dtype)
    return x
