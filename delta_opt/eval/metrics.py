"""Error metrics between a reference (dense) tensor and an approximation of it.

All reductions run in float64 so that small errors are not lost to rounding of the sums.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

# Positions per float64 log-softmax: 256 x 49K vocabulary is 100 MB.
_CHUNK = 256

__all__ = ["kl_divergence", "next_token_agreement", "nll", "perplexity", "relative_l2", "sqnr_db"]


def relative_l2(reference: torch.Tensor, approx: torch.Tensor) -> float:
    """``||approx - reference|| / ||reference||`` over all elements (0 when both are zero)."""
    _same_shape(reference, approx)
    ref, err = reference.double(), approx.double() - reference.double()
    norm = ref.norm()
    if norm == 0:
        return 0.0 if err.norm() == 0 else math.inf
    return float(err.norm() / norm)


def sqnr_db(reference: torch.Tensor, approx: torch.Tensor) -> float:
    """Signal-to-quantisation-noise ratio ``20 log10(||reference|| / ||approx - reference||)`` in dB.

    ``inf`` when the two are equal; higher is better (torchao's convention).
    """
    _same_shape(reference, approx)
    ref, err = reference.double(), approx.double() - reference.double()
    noise = err.norm()
    if noise == 0:
        return math.inf
    return float(20.0 * torch.log10(ref.norm() / noise))


def kl_divergence(reference_logits: torch.Tensor, approx_logits: torch.Tensor) -> float:
    """Mean over positions of ``KL(p_ref || p_approx)`` in nats; logits [..., V]."""
    _same_shape(reference_logits, approx_logits)
    ref_rows = reference_logits.reshape(-1, reference_logits.shape[-1])
    app_rows = approx_logits.reshape(-1, approx_logits.shape[-1])
    total = 0.0
    for r0 in range(0, ref_rows.shape[0], _CHUNK):  # float64 [P, V] at once would take GBs
        ref = F.log_softmax(ref_rows[r0 : r0 + _CHUNK].double(), dim=-1)
        app = F.log_softmax(app_rows[r0 : r0 + _CHUNK].double(), dim=-1)
        total += float((ref.exp() * (ref - app)).sum())
    return total / max(1, ref_rows.shape[0])


def next_token_agreement(reference_logits: torch.Tensor, approx_logits: torch.Tensor) -> float:
    """Fraction of positions whose argmax token agrees; logits [..., V]."""
    _same_shape(reference_logits, approx_logits)
    return float((reference_logits.argmax(-1) == approx_logits.argmax(-1)).double().mean())


def nll(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Negative log-likelihood of each target under its logits: logits [..., V], targets [...] -> [...] (float64)."""
    if logits.shape[:-1] != targets.shape:
        raise ValueError(
            f"targets must have shape {tuple(logits.shape[:-1])} (logits without V); got {tuple(targets.shape)}"
        )
    rows = logits.reshape(-1, logits.shape[-1])
    flat = targets.reshape(-1, 1)
    out = torch.empty(rows.shape[0], dtype=torch.float64, device=logits.device)
    for r0 in range(0, rows.shape[0], _CHUNK):
        logp = F.log_softmax(rows[r0 : r0 + _CHUNK].double(), dim=-1)
        out[r0 : r0 + _CHUNK] = -logp.gather(-1, flat[r0 : r0 + _CHUNK]).squeeze(-1)
    return out.reshape(targets.shape)


def perplexity(logits: torch.Tensor, targets: torch.Tensor) -> float:
    """``exp(mean NLL)`` of ``targets`` under ``logits`` (logits[t] predicts targets[t])."""
    return float(nll(logits, targets).mean().exp())


def _same_shape(a: torch.Tensor, b: torch.Tensor) -> None:
    if a.shape != b.shape:
        raise ValueError(f"the two tensors must have one shape; got {tuple(a.shape)} and {tuple(b.shape)}")
