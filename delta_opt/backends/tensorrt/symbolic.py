"""Integer expressions over tensor sizes that may be unknown until run time.

TensorRT asks a plugin for output shapes, grids and kernel arguments as *symbolic* expressions of
its input dims (``tensorrt.plugin`` ``ShapeExpr``/``SymInt32``: ``+ - * //``, ``cdiv``, ``max``,
``min``), evaluated by the engine at run time without Python. The plugin's launch logic is
written once over :class:`Sym` and is then

- evaluated on integers (tests, the GPU check, int32 range checks over an optimization profile),
- lowered to TensorRT's expressions by :meth:`Sym.lower` inside the plugin.

Operations on two integers fold to an integer, so code written over ``Sym`` runs unchanged on
plain ints (and then returns exactly what the eager launcher computes). A ``Sym`` has no truth
value: a Python ``if`` on a size that is only known at run time raises instead of silently
taking one branch for every shape.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Mapping, Union

__all__ = ["Sym", "SymInt", "cdiv", "evaluate", "interval", "multiple_of", "smax", "smin"]

SymInt = Union[int, "Sym"]

_INT_OPS: dict[str, Callable[[int, int], int]] = {
    "add": lambda a, b: a + b,
    "sub": lambda a, b: a - b,
    "mul": lambda a, b: a * b,
    "floordiv": lambda a, b: a // b,
    "cdiv": lambda a, b: -(-a // b),
    "max": max,
    "min": min,
}


def _check_operand(value: Any) -> SymInt:
    if isinstance(value, bool) or not isinstance(value, (int, Sym)):
        raise TypeError(f"symbolic sizes combine with ints and Syms only; got {type(value).__name__}")
    return value


def _binary(op: str, a: SymInt, b: SymInt) -> SymInt:
    a, b = _check_operand(a), _check_operand(b)
    if isinstance(a, int) and isinstance(b, int):
        if op in ("floordiv", "cdiv") and b == 0:
            raise ZeroDivisionError(f"{op} by zero")
        return _INT_OPS[op](a, b)
    # Identities that keep expressions small (and constant dims constant).
    if op == "sub" and _same(a, b):
        return 0
    if op in ("max", "min") and _same(a, b):
        return a
    if op == "add" and (a == 0 or b == 0):
        return b if a == 0 else a
    if op == "sub" and b == 0:
        return a
    if op == "mul":
        if a == 0 or b == 0:
            return 0
        if a == 1 or b == 1:
            return b if a == 1 else a
    if op in ("floordiv", "cdiv") and b == 1:
        return a
    return Sym(op, (a, b))


def _same(a: SymInt, b: SymInt) -> bool:
    """Whether two operands are the same size (the same object, or the same named size)."""
    if a is b:
        return True
    return isinstance(a, Sym) and isinstance(b, Sym) and a.op == b.op == "var" and a.args == b.args


class Sym:
    """An integer expression: a named run-time size (``Sym.var("n_q")``) or an operation on two
    operands, each an int or a ``Sym``."""

    __slots__ = ("op", "args")

    def __init__(self, op: str, args: tuple[Any, ...]) -> None:
        if op != "var" and op not in _INT_OPS:
            raise ValueError(f"unknown symbolic operation {op!r}")
        self.op = op
        self.args = args

    @classmethod
    def var(cls, name: str) -> "Sym":
        if not isinstance(name, str) or not name:
            raise ValueError(f"a symbolic size needs a non-empty name; got {name!r}")
        return cls("var", (name,))

    # Python operators (both sides, so ``1 - x`` works as well as ``x - 1``).
    def __add__(self, other: SymInt) -> SymInt:
        return _binary("add", self, other)

    def __radd__(self, other: SymInt) -> SymInt:
        return _binary("add", other, self)

    def __sub__(self, other: SymInt) -> SymInt:
        return _binary("sub", self, other)

    def __rsub__(self, other: SymInt) -> SymInt:
        return _binary("sub", other, self)

    def __mul__(self, other: SymInt) -> SymInt:
        return _binary("mul", self, other)

    def __rmul__(self, other: SymInt) -> SymInt:
        return _binary("mul", other, self)

    def __floordiv__(self, other: SymInt) -> SymInt:
        return _binary("floordiv", self, other)

    def __rfloordiv__(self, other: SymInt) -> SymInt:
        return _binary("floordiv", other, self)

    def __neg__(self) -> SymInt:
        return _binary("sub", 0, self)

    def __bool__(self) -> bool:
        raise TypeError(
            f"the symbolic size {self!r} has no truth value: it is only known when the engine runs "
            "(use smax/smin arithmetic instead of a Python branch)"
        )

    def __repr__(self) -> str:
        if self.op == "var":
            return self.args[0]
        symbols = {"add": "+", "sub": "-", "mul": "*", "floordiv": "//"}
        a, b = self.args
        if self.op in symbols:
            return f"({a!r} {symbols[self.op]} {b!r})"
        return f"{self.op}({a!r}, {b!r})"

    @property
    def names(self) -> frozenset[str]:
        """The run-time sizes this expression reads."""
        if self.op == "var":
            return frozenset(self.args)
        return frozenset().union(*(a.names for a in self.args if isinstance(a, Sym)))

    def lower(self, leaf: Callable[[str], Any], ops: Mapping[str, Callable[[Any, Any], Any]]) -> Any:
        """This expression in another algebra: ``leaf(name)`` for each size, ``ops[op](a, b)``
        for each operation (operands are already lowered; int operands stay ints)."""
        if self.op == "var":
            return leaf(self.args[0])
        a, b = (x.lower(leaf, ops) if isinstance(x, Sym) else x for x in self.args)
        return ops[self.op](a, b)


def smax(a: SymInt, b: SymInt) -> SymInt:
    return _binary("max", a, b)


def smin(a: SymInt, b: SymInt) -> SymInt:
    return _binary("min", a, b)


def cdiv(a: SymInt, b: SymInt) -> SymInt:
    """Ceiling division (as ``launch.cdiv`` on ints)."""
    return _binary("cdiv", a, b)


def evaluate(value: SymInt, env: Mapping[str, int]) -> int:
    """The integer value of ``value`` when the sizes take the values in ``env``."""
    if isinstance(value, int):
        return value
    missing = value.names - set(env)
    if missing:
        raise KeyError(f"no value for the size(s) {sorted(missing)} in {value!r}")
    result = value.lower(lambda name: int(env[name]), _INT_OPS)
    return int(result)


def interval(value: SymInt, ranges: Mapping[str, tuple[int, int]]) -> tuple[int, int]:
    """Bounds ``(lo, hi)`` of ``value`` over sizes in the closed ranges ``ranges[name]``.

    Every operation here is monotone in each operand (floor and ceiling division by a positive
    divisor included), so the extremes lie at corners of the operand ranges.
    """
    if isinstance(value, int):
        return value, value
    if value.op == "var":
        lo, hi = ranges[value.args[0]]
        if lo > hi:
            raise ValueError(f"empty range {lo}..{hi} for {value.args[0]}")
        return lo, hi
    (a_lo, a_hi), (b_lo, b_hi) = (interval(x, ranges) for x in value.args)
    if value.op in ("floordiv", "cdiv") and b_lo <= 0:
        raise ValueError(f"{value!r}: the divisor may be <= 0 over these ranges")
    fn = _INT_OPS[value.op]
    corners = [fn(a, b) for a in (a_lo, a_hi) for b in (b_lo, b_hi)]
    return min(corners), max(corners)


def multiple_of(value: SymInt) -> int:
    """A number that provably divides ``value`` for every size (1 when nothing is known).

    Used to tell Triton that an argument is divisible by 16 exactly when that holds for every
    shape the engine will see (e.g. a stride ``N * 64``).
    """
    if isinstance(value, int):
        return abs(value)  # 0 is a multiple of everything: math.gcd(0, k) == k
    if value.op == "mul":
        a, b = (multiple_of(x) for x in value.args)
        return a * b
    if value.op in ("add", "sub", "max", "min"):
        a, b = (multiple_of(x) for x in value.args)
        return math.gcd(a, b)
    return 1
