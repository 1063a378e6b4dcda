"""Correction rules and per-layer plans: what a calibrated conversion does layer by layer, head by head.

The paper's rule (``Correction.PAPER``, DESIGN §1) adds the anchor row's dense-minus-sparse
difference to every row of its block. Measured on SmolLM2-135M it often makes the attention
output *worse* than no correction. Two more rules are available:

- ``Correction.NONE``: rows ``[0, Np)`` keep their sparse output; the dense tail stays.
- ``Correction.TAYLOR``: row i mixes its own sparse output with the anchor's long-range output,
  weighted by the softmax mass the long-range keys would have at row i's query. That mass is the
  anchor's long-range log-normaliser extrapolated to q_i to first order (a Taylor expansion of
  log-sum-exp around q_a)::

      R_a        = keys that are dense for the anchor a but outside its window and sinks
      l_r(a)     = logsumexp_{j in R_a} s q_a.k_j        O_r(a) = softmax_{R_a}(s q_a.k) v
      mu(a)      = softmax_{R_a}(s q_a.k) k              (the mean long-range key)
      l_hat(i)   = l_r(a) + s (q_i - q_a) . mu(a)        (first-order estimate of l_r(i))
      w(i)       = sigmoid(l_hat(i) - l_s(i))            (l_s: row i's own sparse log-normaliser)
      O(i)       = (1 - w(i)) O_s(i) + w(i) O_r(a)

  At an anchor (q_i = q_a) this is exactly dense attention. It reads no key or query after row
  i. It costs one more product (weights x K) on the anchor rows and O(D) per row.

Retrieval (``retrieve=K``, any rule): each anchor also picks its K highest-scoring long-range
keys, and the rows it corrects attend to them exactly, as part of their sparse set; the rules
then apply to what is left (``taylor`` extrapolates the mass of the remaining long-range keys).
It catches the few distant keys a head attends to sharply — a needle, a copied span — which no
extrapolation of an average can. Cost: K more keys per row, and a top-K over each anchor's scores.

A :class:`LayerPlan` overrides the rule per query head (and optionally W and G) for one layer;
:func:`delta_opt.calibrate` chooses plans from real activations.
"""

from __future__ import annotations

import dataclasses
import enum
from typing import Any, Mapping, Sequence

__all__ = ["Correction", "LayerPlan", "format_corrections", "parse_corrections"]


class Correction(str, enum.Enum):
    """How rows ``[0, Np)`` are corrected towards dense attention (see the module docstring)."""

    PAPER = "paper"
    NONE = "none"
    TAYLOR = "taylor"

    @classmethod
    def parse(cls, value: "Correction | str", *, name: str = "correction") -> "Correction":
        if isinstance(value, cls):
            return value
        if isinstance(value, str):
            try:
                return cls(value.strip().lower())
            except ValueError:
                pass
        valid = ", ".join(repr(m.value) for m in cls)
        raise ValueError(f"{name} must be one of {valid}; got {value!r}")

    @property
    def code(self) -> int:
        """The rule as an integer, as the Triton kernels and the ONNX node carry it: paper 0, none 1, taylor 2.

        The codes are part of the ONNX node contract (``delta_opt/backends/onnx/schema.py``): never renumber.
        """
        return _CODES[self]

    @classmethod
    def from_code(cls, code: int) -> "Correction":
        for rule, value in _CODES.items():
            if value == code and not isinstance(code, bool):
                return rule
        raise ValueError(f"a correction code must be one of {sorted(_CODES.values())}; got {code!r}")


_CODES = {Correction.PAPER: 0, Correction.NONE: 1, Correction.TAYLOR: 2}


def parse_corrections(value: str, heads: int) -> tuple[Correction, ...]:
    """The op's ``correction`` argument as one rule per query head.

    ``value`` is one rule name (applied to every head) or a comma-separated list of ``heads``
    rule names, one per query head in order.
    """
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"correction must be a rule name or a comma-separated list of them; got {value!r}")
    parts = [p for p in value.split(",")]
    rules = tuple(Correction.parse(p) for p in parts)
    if len(rules) == 1:
        return rules * heads
    if len(rules) != heads:
        raise ValueError(
            f"correction must name one rule, or one per query head (Hq={heads}); got {len(rules)} rules"
        )
    return rules


def format_corrections(rules: Sequence[Correction]) -> str:
    """The inverse of :func:`parse_corrections`: one name when all heads agree, else the list."""
    values = [Correction.parse(r).value for r in rules]
    if not values:
        raise ValueError("corrections must name at least one rule")
    return values[0] if len(set(values)) == 1 else ",".join(values)


@dataclasses.dataclass(frozen=True)
class LayerPlan:
    """What one layer does, overriding the config: per-head rules and, optionally, W and G.

    Attributes:
        corrections: one :class:`Correction` per query head; empty means the config's rule.
        window: this layer's window W (None: the config's).
        stride: this layer's stride G (None: the config's); the tail follows the config's rule.
        retrieve: this layer's number of retrieved keys per anchor (None: the config's).
    """

    corrections: tuple[Correction, ...] = ()
    window: int | None = None
    stride: int | None = None
    retrieve: int | None = None

    def __post_init__(self) -> None:
        if isinstance(self.corrections, str) or not isinstance(self.corrections, (tuple, list)):
            raise ValueError(f"corrections must be a list of rule names; got {self.corrections!r}")
        object.__setattr__(self, "corrections", tuple(Correction.parse(c) for c in self.corrections))
        for name, minimum in (("window", 1), ("stride", 1), ("retrieve", 0)):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < minimum):
                raise ValueError(f"{name} must be an integer >= {minimum} or None; got {value!r}")

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"corrections": [c.value for c in self.corrections]}
        if self.window is not None:
            out["window"] = self.window
        if self.stride is not None:
            out["stride"] = self.stride
        if self.retrieve is not None:
            out["retrieve"] = self.retrieve
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "LayerPlan":
        if not isinstance(data, Mapping):
            raise ValueError(f"a layer plan must be a mapping; got {data!r}")
        valid = ("corrections", "window", "stride", "retrieve")
        unknown = sorted(set(data) - set(valid))
        if unknown:
            raise ValueError(f"unknown layer plan key(s) {', '.join(map(repr, unknown))}; valid keys are {', '.join(valid)}")
        return cls(**dict(data))
