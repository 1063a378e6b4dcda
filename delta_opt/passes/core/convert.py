"""The part every pass shares: decide each found site, rewrite the ones that stay, report all."""

from __future__ import annotations

from typing import Iterable

from torch.fx import GraphModule, Node

from ...config import DeltaConfig
from ..report import Report, UnmatchedSoftmax
from .graph import GraphContext, module_path
from .masks import MaskPlan, plan_mask
from .rewrite import RewriteError, emit_site, prune
from .site import AttentionSite, Unmatched, site_report, skip_reason

__all__ = ["apply_sites"]


def apply_sites(
    gm: GraphModule, ctx: GraphContext, config: DeltaConfig, found: Iterable[AttentionSite | Unmatched]
) -> Report:
    """Convert the sites in ``found`` that pass :func:`skip_reason` and report every one.

    Sites are all found before any is rewritten, so one rewrite never changes what the next
    match sees.
    """
    items = list(found)
    report = Report(config=config.to_dict())
    regions: set[Node] = set()
    for item in items:
        if isinstance(item, Unmatched):
            report.unmatched.append(UnmatchedSoftmax(module_path(item.node), item.node.name, item.reason))
            continue
        reason = skip_reason(ctx, item, config)
        plan: MaskPlan | None = None
        if item.q is not None and item.k is not None and not (reason or "").startswith("cross-attention"):
            plan = plan_mask(ctx, item.mask_terms, causal=item.causal, seq_len=item.q.shape[2])
        if reason is None:
            assert plan is not None
            try:
                emit_site(gm, item, plan, config)
                regions |= item.nodes | {item.anchor}
            except RewriteError as e:
                reason = f"could not be rewritten: {e}"
        report.sites.append(site_report(len(report.sites), item, reason, plan))
    if regions:
        prune(gm, regions)
    return report
