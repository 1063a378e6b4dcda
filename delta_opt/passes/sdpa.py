"""Pass: ``scaled_dot_product_attention`` and its backend forms -> ``delta_opt::delta_attention``.

Covers ``aten.scaled_dot_product_attention`` (what ``torch.export`` keeps) and the backend
overloads a program may hold once SDPA has been dispatched (``_for_cpu`` flash, efficient,
flash, cuDNN, the overrideable fused form), with their ``is_causal``, mask/bias, ``scale`` and
``enable_gqa`` arguments (:data:`~.core.ops.SDPA_FORMS` says which overload names what).
Grouped-query K/V repeated before the call are un-repeated (see :mod:`.core.operands`).
"""

from __future__ import annotations

from typing import Iterator

import torch
from torch.fx import GraphModule, Node

from ..config import DeltaConfig
from .core.convert import apply_sites
from .core.graph import GraphContext
from .core.masks import MaskTerm
from .core.ops import GETITEM, SDPA_FORMS, SdpaForm, bind
from .core.operands import resolve_qkv
from .core.site import AttentionSite, Unmatched, default_scale
from .report import Report

__all__ = ["convert_sdpa", "find_sdpa_sites"]


def convert_sdpa(gm: GraphModule, config: DeltaConfig, *, context: GraphContext | None = None) -> Report:
    """Rewrite every convertible SDPA call of ``gm`` in place; report every one found.

    ``context`` tells fixed values from data (built from ``gm`` itself when omitted: placeholders
    are data, ``get_attr`` nodes fixed); :func:`delta_opt.optimize` passes one made from the
    exported program's signature.
    """
    ctx = GraphContext.from_graph_module(gm) if context is None else context
    return apply_sites(gm, ctx, config, find_sdpa_sites(ctx, gm))


def find_sdpa_sites(ctx: GraphContext, gm: GraphModule) -> Iterator[AttentionSite | Unmatched]:
    for node in gm.graph.nodes:
        form = SDPA_FORMS.get(node.target) if node.op == "call_function" else None
        if form is not None:
            site = _match(ctx, node, form)
            if site is not None:
                yield site


def _match(ctx: GraphContext, node: Node, form: SdpaForm) -> AttentionSite | None:
    args = bind(node)
    anchor = node
    problem = None
    if form.tuple_output:
        outputs = [u for u in node.users if u.target is GETITEM]
        first = [u for u in outputs if u.args[1] == 0]
        if not first:
            return None  # the attention output is not used: nothing to convert
        anchor = first[0]
        extra = sorted(u.name for u in outputs if u.args[1] != 0 and u.users)
        if extra:
            problem = f"the auxiliary outputs of {node.name} are used ({', '.join(extra)})"
    site = AttentionSite(form.name, anchor, nodes={node, anchor})
    site.causal = bool(args.get("is_causal", False))
    dropout = args.get("dropout_p", 0.0)
    if not isinstance(dropout, (int, float)) or dropout != 0:
        problem = problem or f"dropout_p={dropout} is active (training mode): call model.eval() before converting"
    gqa = bool(args.get(form.gqa, False)) if form.gqa else False
    resolved = resolve_qkv(ctx, args["query"], args["key"], args["value"], k_transposed=False, gqa=gqa)
    if isinstance(resolved, str):
        site.problem = problem or f"operands not understood: {resolved}"
        return site
    site.q, site.k, site.v = resolved
    scale = args.get("scale")
    head_dim = ctx.shape(args["query"])[-1]  # type: ignore[index]
    base = default_scale(head_dim) if scale is None else scale
    if not isinstance(base, (int, float)):
        site.problem = problem or f"the scale ({scale!r}, head dim {head_dim}) is not a constant"
        return site
    site.scale = float(base) * site.q.scale * site.k.scale
    mask = args.get(form.mask) if form.mask else None
    if isinstance(mask, Node):
        kind = "bool" if mask.meta["val"].dtype == torch.bool else "additive"
        site.mask_terms = (MaskTerm(mask, kind, scores_rank=mask_rank(args["query"])),)
        site.nodes.add(mask)
    site.problem = problem
    return site


def mask_rank(query: Node) -> int:
    return len(query.meta["val"].shape)
