"""The ONNX node contract of Delta Attention: what every producer and consumer must agree on.

The exporter writes one node per ``delta_opt::delta_attention`` site; ONNX Runtime runs it through
the model-local function body (:mod:`.body`); a TensorRT plugin registered under the same name,
domain and version replaces it. Anything that reads or writes the node imports its facts from here.

Node ``delta_opt.DeltaAttention`` (domain ``delta_opt``, version 1)

Inputs (all of one element type T, float32 / float16 / bfloat16):

- ``q``         [B, Hq, Nq, D]
- ``k``         [B, Hkv, Nk, D]    ``Hq % Hkv == 0``; query head h reads kv head ``h // (Hq / Hkv)``
- ``v``         [B, Hkv, Nk, Dv]
- ``attn_mask`` [Bm, Hm, Mq, Mk]   always present, always rank 4, always *additive* in T:
  ``Bm in {1, B}``, ``Hm in {1, Hq}``, ``Mq in {1, Nq}``, ``Mk in {1, Nk}``; ``-inf`` marks a key that
  may not be attended, finite values are added to the scores. "No mask" is a ``[1, 1, 1, 1]`` zero
  tensor.

  Why a canonical mask instead of an optional input: a function body cannot test whether an
  optional input is present, and two overloads would double what a plugin must match. The
  exporter therefore turns the PyTorch op's ``attn_mask`` (None, bool with True = may attend, or
  additive float, of any rank <= 4) into this form in front of the node: None -> zeros
  [1, 1, 1, 1]; bool -> ``where(mask, 0, -inf)``; lower rank -> leading 1s; other float dtype -> T.

Output: ``out`` [B, Hq, Nq, Dv], element type T.

Attributes (all required, all resolved: no "default" sentinels on the node):

- ``causal`` int 0/1; ``window`` int W >= 1; ``sinks`` int S >= 0; ``stride`` int G >= 1;
- ``tail`` int T >= 0 (the PyTorch op's ``tail=None`` is written as ``max(128, G)``);
- ``scale`` float (the PyTorch op's ``scale=None`` is written as ``1/sqrt(D)``);
- ``correction`` ints: how rows ``[0, Np)`` are corrected, as ``delta_opt.Correction`` codes
  (``paper`` 0, ``none`` 1, ``taylor`` 2; see ``delta_opt/plan.py``). Either one code, for every
  query head, or exactly Hq codes, one per query head in order. The PyTorch op's
  ``correction="paper"`` is ``[0]``; ``"taylor,none,paper"`` (Hq = 3) is ``[2, 1, 0]``; a
  per-head list whose heads all agree is written as its one code.

  Why integer codes and not the op's string: the function body must read the plan to select a
  rule per head, and the ops TensorRT imports have no string tensors. A consumer must treat any
  other code, or a list of another length, as an error; the function body outputs NaN for the
  heads whose code it does not implement (see ``delta_opt/backends/onnx/body.py``).

Semantics: DESIGN §1 and the correction rules, as in ``delta_opt/ops/reference.py``. When ``Nq != Nk`` (decode steps,
chunked prefill) the node computes dense attention with the causal diagonal aligned bottom-right
(query i sees keys ``j <= i + Nk - Nq``), exactly like the PyTorch op. A row with no visible key is
zero.

The name is never ``Attention``: TensorRT reserves that op type for its own attention layer.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping

from ...config import default_tail
from ...plan import Correction, format_corrections

__all__ = [
    "ATTRIBUTES",
    "DOMAIN",
    "ELEMENT_TYPES",
    "INPUTS",
    "OP_TYPE",
    "OUTPUTS",
    "VERSION",
    "NodeAttributes",
    "op_schema",
]

OP_TYPE = "DeltaAttention"
DOMAIN = "delta_opt"
VERSION = 1
INPUTS = ("q", "k", "v", "attn_mask")
OUTPUTS = ("out",)
# onnx TensorProto element types the node accepts (the body computes in float32 either way).
ELEMENT_TYPES = ("tensor(float)", "tensor(float16)", "tensor(bfloat16)")
# name -> (onnx attribute type name, meaning), in the order the node writes them.
ATTRIBUTES: dict[str, tuple[str, str]] = {
    "causal": ("INT", "1: query i may only see keys j <= i (bottom-right aligned when Nq != Nk); 0: bidirectional"),
    "window": ("INT", "W >= 1: key j is in the window of query i when |i - j| < W"),
    "sinks": ("INT", "S >= 0: keys j < S are visible to every query"),
    "stride": ("INT", "G >= 1: every G-th query row is an anchor computed densely"),
    "tail": ("INT", "T >= 0: rows [Np, N) with Np = floor((N - T) / G) * G are computed densely"),
    "scale": ("FLOAT", "softmax scale applied to q . k"),
    "correction": (
        "INTS",
        "correction rule codes (paper 0, none 1, taylor 2) of rows [0, Np): one for every query head, or one per query head",
    ),
}


@dataclass(frozen=True)
class NodeAttributes:
    """The attributes of one ``DeltaAttention`` node, resolved and validated."""

    causal: bool
    window: int
    sinks: int
    stride: int
    tail: int
    scale: float
    # One rule for every query head, or one per query head (a plan whose heads agree is one rule).
    correction: tuple[Correction, ...] = (Correction.PAPER,)

    def __post_init__(self) -> None:
        if not isinstance(self.causal, bool):
            raise ValueError(f"causal must be a bool; got {self.causal!r}")
        if isinstance(self.correction, (str, Correction)) or not isinstance(self.correction, (tuple, list)) or not self.correction:
            raise ValueError(f"correction must be a non-empty sequence of rules; got {self.correction!r}")
        rules = tuple(Correction.parse(c) for c in self.correction)
        object.__setattr__(self, "correction", rules[:1] if len(set(rules)) == 1 else rules)
        for name, minimum in (("window", 1), ("sinks", 0), ("stride", 1), ("tail", 0)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
                raise ValueError(f"{name} must be an integer >= {minimum}; got {value!r}")
        if isinstance(self.scale, bool) or not isinstance(self.scale, (int, float)) or not math.isfinite(self.scale):
            raise ValueError(f"scale must be a finite float; got {self.scale!r}")

    @classmethod
    def from_op_kwargs(cls, kwargs: Mapping[str, Any], head_dim: int) -> "NodeAttributes":
        """Resolve the keyword arguments of ``delta_opt::delta_attention`` for a head dim D.

        ``tail=None`` becomes ``max(128, stride)``, ``scale=None`` becomes ``1/sqrt(D)`` and the
        ``correction`` string (one rule name, or a comma-separated list of one per query head)
        becomes a tuple of rules; the op's defaults apply to missing keys. ``impl`` only chooses
        an eager implementation and is not part of the node.
        """
        stride = kwargs.get("stride", 64)
        tail = kwargs.get("tail")
        scale = kwargs.get("scale")
        correction = kwargs.get("correction", Correction.PAPER.value)
        if not isinstance(correction, str) or not correction.strip():
            raise ValueError(f"correction must be a rule name or a comma-separated list of them; got {correction!r}")
        return cls(
            causal=kwargs["causal"],
            window=kwargs.get("window", 2048),
            sinks=kwargs.get("sinks", 1024),
            stride=stride,
            tail=default_tail(stride) if tail is None else tail,
            scale=1.0 / math.sqrt(head_dim) if scale is None else float(scale),
            correction=tuple(Correction.parse(name) for name in correction.split(",")),
        )

    @property
    def correction_string(self) -> str:
        """The plan as the PyTorch op's ``correction`` argument (``"paper"``, ``"taylor,none,.."``)."""
        return format_corrections(self.correction)

    def to_onnx(self) -> dict[str, int | float | list[int]]:
        """Attribute values as the node stores them (causal as int 0/1, rules as codes)."""
        return {
            "causal": int(self.causal),
            "window": self.window,
            "sinks": self.sinks,
            "stride": self.stride,
            "tail": self.tail,
            "scale": float(self.scale),
            "correction": [rule.code for rule in self.correction],
        }


def op_schema():
    """The node contract as an ``onnx.defs.OpSchema`` (used to emit the node with onnxscript).

    It is not registered globally: the model-local function is what defines the op for ONNX.
    """
    from onnx.defs import OpSchema

    param = OpSchema.FormalParameter
    return OpSchema(
        OP_TYPE,
        DOMAIN,
        VERSION,
        doc=__doc__,
        inputs=[param(name, "T") for name in INPUTS],
        outputs=[param(name, "T") for name in OUTPUTS],
        type_constraints=[("T", list(ELEMENT_TYPES), "floating-point attention inputs")],
        attributes=[
            OpSchema.Attribute(name, getattr(OpSchema.AttrType, kind), doc, required=True)
            for name, (kind, doc) in ATTRIBUTES.items()
        ],
    )
