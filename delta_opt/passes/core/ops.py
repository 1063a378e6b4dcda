"""The ATen vocabulary of attention, as tables rather than code paths.

Every matcher in :mod:`delta_opt.passes` reads these sets; adding an op that means the same
thing (a new view variant, another softmax) is a one-line change here. The sets cover both the
IR of ``torch.export`` (``aten.matmul``, ``aten.softmax.int``, ``aten.scaled_dot_product_attention``)
and the core-ATen IR left by ``run_decompositions()`` (``aten.bmm``, ``aten._softmax``, ``clone``
for eval dropout, ``expand`` + ``clone`` + ``view`` for ``repeat_interleave``).
"""

from __future__ import annotations

import operator
from dataclasses import dataclass

import torch

aten = torch.ops.aten

__all__ = [
    "CASTS",
    "IDENTITY",
    "LAYOUT",
    "PRODUCTS",
    "REPLAY_AS",
    "SDPA_FORMS",
    "SOFTMAX",
    "SdpaForm",
    "VIEWS",
    "bind",
    "is_op",
]


def _existing(*names: str) -> frozenset:
    """The overloads among ``names`` (``"view.default"``) that this torch build has."""
    found = []
    for name in names:
        packet, _, overload = name.partition(".")
        op = getattr(aten, packet, None)
        if op is not None and hasattr(op, overload):
            found.append(getattr(op, overload))
    return frozenset(found)


# Softmax over the key axis. `_safe_softmax` (SDPA's math path) returns 0 for all-masked rows.
SOFTMAX = _existing("_softmax.default", "softmax.int", "_safe_softmax.default")

# q @ k^T and weights @ v.
PRODUCTS = _existing("matmul.default", "bmm.default", "einsum.default", "baddbmm.default")

# Dtype conversions: a softmax upcast to float32 and the cast back.
_convert = getattr(torch.ops.prims, "convert_element_type", None)
CASTS = _existing("_to_copy.default", "to.dtype", "to.dtype_layout", "type_as.default") | (
    frozenset({_convert.default}) if _convert is not None else frozenset()
)

# Ops that return their input's values unchanged (eval-mode dropout after decomposition is a clone).
IDENTITY = _existing("clone.default", "contiguous.default", "alias.default", "lift_fresh_copy.default")

# Pure re-indexing of one tensor argument (argument 0): no arithmetic, so replaying them on a
# tensor of element ids tells exactly which source element lands where (see operands.py).
LAYOUT = IDENTITY | _existing(
    "view.default",
    "reshape.default",
    "_unsafe_view.default",
    "view_copy.default",
    "expand.default",
    "expand_copy.default",
    "transpose.int",
    "transpose_copy.int",
    "permute.default",
    "permute_copy.default",
    "t.default",
    "unsqueeze.default",
    "unsqueeze_copy.default",
    "squeeze.dim",
    "squeeze.dims",
    "squeeze.default",
    "flatten.using_ints",
    "unflatten.int",
    "repeat_interleave.self_int",
    "repeat.default",
)

# The layout ops that never copy: between the products and the softmax only these may appear,
# and their geometry is checked on a meta tensor (see operands.regroups_leading_dims).
VIEWS = IDENTITY | _existing(
    "view.default",
    "reshape.default",
    "_unsafe_view.default",
    "expand.default",
    "transpose.int",
    "permute.default",
    "t.default",
    "unsqueeze.default",
    "squeeze.dim",
    "squeeze.dims",
    "squeeze.default",
)

# In a replay the ids tensor may be laid out differently from the traced tensor, so a view that
# was legal there may need a copy here; reshape has the same element mapping either way.
REPLAY_AS = {op: aten.reshape.default for op in _existing("view.default", "_unsafe_view.default", "view_copy.default")}


def is_op(node: torch.fx.Node, ops: frozenset | set) -> bool:
    return node.op == "call_function" and node.target in ops


def bind(node: torch.fx.Node) -> dict[str, object]:
    """The node's arguments by schema name, defaults filled in."""
    schema = node.target._schema  # type: ignore[union-attr]
    bound: dict[str, object] = {}
    positional = list(node.args)
    for i, arg in enumerate(schema.arguments):
        if i < len(positional) and not arg.kwarg_only:
            bound[arg.name] = positional[i]
        elif arg.name in node.kwargs:
            bound[arg.name] = node.kwargs[arg.name]
        elif arg.has_default_value():
            bound[arg.name] = arg.default_value
    return bound


@dataclass(frozen=True)
class SdpaForm:
    """How one scaled-dot-product-attention overload names its arguments.

    ``mask`` / ``gqa`` are None where the overload has no such argument; ``tuple_output`` says the
    attention output is element 0 of a tuple (the backend forms also return a log-sum-exp).
    """

    name: str
    op: torch._ops.OpOverload
    mask: str | None
    gqa: str | None
    tuple_output: bool


def _sdpa_forms() -> dict[torch._ops.OpOverload, SdpaForm]:
    table = [
        ("sdpa", "scaled_dot_product_attention.default", "attn_mask", "enable_gqa", False),
        ("sdpa_flash_cpu", "_scaled_dot_product_flash_attention_for_cpu.default", "attn_mask", None, True),
        ("sdpa_efficient", "_scaled_dot_product_efficient_attention.default", "attn_bias", None, True),
        ("sdpa_flash", "_scaled_dot_product_flash_attention.default", None, None, True),
        ("sdpa_cudnn", "_scaled_dot_product_cudnn_attention.default", "attn_bias", None, True),
        ("sdpa_overrideable", "_scaled_dot_product_fused_attention_overrideable.default", "attn_bias", None, True),
    ]
    forms = {}
    for name, op_name, mask, gqa, tuple_output in table:
        for op in _existing(op_name):
            forms[op] = SdpaForm(name, op, mask, gqa, tuple_output)
    return forms


SDPA_FORMS = _sdpa_forms()

GETITEM = operator.getitem
