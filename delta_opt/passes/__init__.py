"""FX passes: find the attention in a traced program and rewrite it to ``delta_opt::delta_attention``.

- :func:`optimize` — the verb: trace (or copy) a program, run the passes, return it and a report;
- :func:`convert_sdpa` — ``scaled_dot_product_attention`` and its backend forms;
- :func:`convert_softmax_attention` — attention written out as matmul/bmm/einsum + softmax;
- :class:`Report` / :class:`SiteReport` — what was converted, and why the rest was not.

Each pass is a function ``(graph_module, config) -> Report`` that rewrites the graph in place.
The matching core they share lives in :mod:`delta_opt.passes.core`.
"""

from .optimize import PASSES, optimize
from .report import Report, SiteReport, UnmatchedSoftmax
from .sdpa import convert_sdpa
from .softmax_chain import convert_softmax_attention

__all__ = [
    "PASSES",
    "Report",
    "SiteReport",
    "UnmatchedSoftmax",
    "convert_sdpa",
    "convert_softmax_attention",
    "optimize",
]
