"""Symbolic sizes: folding on ints, evaluation, bounds, divisibility, lowering to another algebra."""

from __future__ import annotations

import operator

import pytest
from hypothesis import given
from hypothesis import strategies as st

from delta_opt.backends.tensorrt.symbolic import Sym, cdiv, evaluate, interval, multiple_of, smax, smin

N, B = Sym.var("N"), Sym.var("B")


def test_operations_on_ints_fold_to_ints() -> None:
    assert smax(3, 5) == 5 and smin(3, 5) == 3 and cdiv(7, 2) == 4 and cdiv(-7, 2) == -3
    assert isinstance(N - N, int) and N - N == 0  # the same size
    assert N * 1 is N and 1 * N is N and N + 0 is N and N * 0 == 0 and N // 1 is N
    assert smax(N, N) is N


def test_a_symbolic_size_has_no_truth_value() -> None:
    with pytest.raises(TypeError, match="no truth value"):
        bool(N + 1)
    with pytest.raises(TypeError, match="no truth value"):
        if N - 3:
            pass


def test_bad_operands_are_refused() -> None:
    with pytest.raises(TypeError):
        N + 1.5  # type: ignore[operator]
    with pytest.raises(TypeError):
        N + True  # type: ignore[operator]
    with pytest.raises(ZeroDivisionError):
        cdiv(3, 0)
    with pytest.raises(ValueError):
        Sym.var("")


@given(n=st.integers(-300, 300), b=st.integers(1, 9), c=st.integers(1, 70))
def test_expressions_evaluate_like_python(n: int, b: int, c: int) -> None:
    expr = smax(0, (N - c) // b * b) + cdiv(N, c) * B - smin(N, c) + (-N)
    expected = max(0, (n - c) // b * b) + -(-n // c) * b - min(n, c) - n
    assert evaluate(expr, {"N": n, "B": b}) == expected
    assert expr.names == {"N", "B"}
    with pytest.raises(KeyError, match="B"):
        evaluate(expr, {"N": n})


@given(lo=st.integers(-50, 50), width=st.integers(0, 60), d=st.integers(1, 9))
def test_interval_bounds_every_value(lo: int, width: int, d: int) -> None:
    expr = smin(1, smax(0, N - 7)) * (N // d) + cdiv(N, d) - N * 3
    bounds = interval(expr, {"N": (lo, lo + width)})
    values = [evaluate(expr, {"N": n}) for n in range(lo, lo + width + 1)]
    assert bounds[0] <= min(values) and max(values) <= bounds[1]
    # tight for monotone pieces: the corners are attained
    assert interval(N * 4 + 1, {"N": (lo, lo + width)}) == (4 * lo + 1, 4 * (lo + width) + 1)


def test_interval_refuses_a_divisor_that_may_be_zero() -> None:
    with pytest.raises(ValueError, match="divisor"):
        interval(N // B, {"N": (0, 5), "B": (0, 3)})


@given(n=st.integers(0, 500), b=st.integers(1, 8))
def test_multiple_of_is_a_true_divisor(n: int, b: int) -> None:
    for expr in (N * 64, B * N * 48 + 16 * B, smax(N * 32, 16), N * 64 - 32, N + 64, cdiv(N, 16) * 16):
        k = multiple_of(expr)
        assert k >= 1 and evaluate(expr, {"N": n, "B": b}) % k == 0, (expr, k)
    assert multiple_of(N * 64) % 16 == 0 and multiple_of(N * 40) % 16 != 0 and multiple_of(N + 64) == 1


def test_lower_maps_every_operation() -> None:
    expr = cdiv(smax(N - 3, 1) * B, 4) + smin(N // 2, 7)
    ops = {"add": operator.add, "sub": operator.sub, "mul": operator.mul, "floordiv": operator.floordiv,
           "cdiv": lambda a, b: -(-a // b), "max": max, "min": min}  # fmt: skip
    assert expr.lower({"N": 19, "B": 3}.__getitem__, ops) == evaluate(expr, {"N": 19, "B": 3})
    # A string algebra shows the structure the TensorRT lowering receives (ints stay ints).
    text = expr.lower(str, {k: (lambda k: lambda a, b: f"{k}({a},{b})")(k) for k in ops})
    assert text == "add(cdiv(mul(max(sub(N,3),1),B),4),min(floordiv(N,2),7))"
