"""What a conversion did, site by site: JSON-ready (:meth:`Report.to_dict`) and printable (``str``)."""

from __future__ import annotations

import dataclasses
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Report", "SiteReport", "UnmatchedSoftmax"]

Size = int | str  # a static size, or a symbolic one written as its symbol ("s0")


@dataclass
class SiteReport:
    """One attention site, converted or not.

    Attributes:
        index: position of the site in the program (0-based, program order).
        module: the module the site was traced in (``model.layers.3.self_attn``), from ``nn_module_stack``.
        module_type: its class name (``LlamaAttention``).
        layer: the first integer in ``module`` (the layer filter's index), or None.
        form: how the site was written: ``sdpa``, ``sdpa_flash_cpu``, ``sdpa_efficient``,
            ``sdpa_flash``, ``sdpa_cudnn``, or the q.k^T product of a softmax chain (``matmul``,
            ``bmm``, ``einsum``, ``baddbmm``).
        node: name of the graph node whose value the op replaces (or would have replaced).
        converted: whether the site now calls ``delta_opt::delta_attention``.
        reason: why it was not converted (None when converted).
        q_shape, k_shape, v_shape: ``[B, H, N, D]`` as the op receives them (K/V un-repeated).
        heads, kv_heads: query heads and distinct K/V heads (``heads // kv_heads`` = GQA group).
        kv_repeat: how many times the model repeated each K/V head before the product (removed).
        merged_heads: the site computes on ``[B*H, N, D]``; the op sees batch 1 and B*H heads.
        causal: the op's ``causal`` flag; mask: what it gets as ``attn_mask`` (see ``MaskKind``).
        mask_note: how the mask kind was decided (e.g. "proved causal at the traced length 16").
        scale: the softmax scale handed to the op.
        notes: anything else worth knowing.
    """

    index: int
    module: str
    module_type: str
    layer: int | None
    form: str
    node: str
    converted: bool
    reason: str | None = None
    q_shape: list[Size] | None = None
    k_shape: list[Size] | None = None
    v_shape: list[Size] | None = None
    heads: Size | None = None
    kv_heads: Size | None = None
    kv_repeat: int | None = None
    merged_heads: bool = False
    causal: bool | None = None
    mask: str | None = None
    mask_note: str = ""
    scale: float | None = None
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass
class UnmatchedSoftmax:
    """A softmax that is not attention (a classifier head, a router) or not one the passes understand."""

    module: str
    node: str
    reason: str

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass
class Report:
    """Every attention site of a program and what happened to it.

    ``num_sites``, ``num_converted`` and ``num_skipped`` count sites; ``skip_reasons`` groups the
    skipped ones by reason; ``unmatched`` lists softmaxes that were not taken for attention.
    """

    sites: list[SiteReport] = field(default_factory=list)
    unmatched: list[UnmatchedSoftmax] = field(default_factory=list)
    config: dict[str, Any] = field(default_factory=dict)
    source: str = ""

    @property
    def num_sites(self) -> int:
        return len(self.sites)

    @property
    def converted(self) -> list[SiteReport]:
        return [s for s in self.sites if s.converted]

    @property
    def skipped(self) -> list[SiteReport]:
        return [s for s in self.sites if not s.converted]

    @property
    def num_converted(self) -> int:
        return len(self.converted)

    @property
    def num_skipped(self) -> int:
        return len(self.skipped)

    @property
    def skip_reasons(self) -> dict[str, int]:
        return dict(Counter(s.reason or "" for s in self.skipped))

    @property
    def forms(self) -> dict[str, int]:
        """Converted sites by form: the per-pattern counters."""
        return dict(Counter(s.form for s in self.converted))

    def extend(self, other: "Report") -> None:
        """Append another pass's sites and unmatched softmaxes, renumbering sites in order."""
        self.sites.extend(other.sites)
        self.unmatched.extend(other.unmatched)
        for i, site in enumerate(self.sites):
            site.index = i

    def to_dict(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "config": self.config,
            "num_sites": self.num_sites,
            "num_converted": self.num_converted,
            "num_skipped": self.num_skipped,
            "skip_reasons": self.skip_reasons,
            "forms": self.forms,
            "sites": [s.to_dict() for s in self.sites],
            "unmatched_softmax": [u.to_dict() for u in self.unmatched],
        }

    def __str__(self) -> str:
        head = (
            f"delta_opt: {self.num_sites} attention site(s), {self.num_converted} converted, "
            f"{self.num_skipped} skipped" + (f" ({self.source})" if self.source else "")
        )
        rows = [("#", "module", "form", "q [B,H,N,D]", "heads/kv", "mask", "status")]
        for s in self.sites:
            shape = "[" + ",".join(map(str, s.q_shape)) + "]" if s.q_shape else "?"
            heads = f"{s.heads}/{s.kv_heads}" if s.heads is not None else "?"
            mask = s.mask or "?"
            status = "converted" if s.converted else f"skipped: {s.reason}"
            rows.append((str(s.index), s.module or "<root>", s.form, shape, heads, mask, status))
        widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
        lines = [head]
        for r in rows:
            lines.append("  ".join(c.ljust(w) for c, w in zip(r, widths)) + "  " + r[-1])
        if self.unmatched:
            lines.append(f"softmax not taken for attention: {len(self.unmatched)}")
            lines.extend(f"  {u.module or '<root>'} ({u.node}): {u.reason}" for u in self.unmatched)
        return "\n".join(lines)
