"""Reading batch padding out of the 4-D masks that model code builds.

A Hugging Face model turns its 2-D ``attention_mask`` (1 = token, 0 = padding) into a 4-D bool
mask ``[B, 1, N, N]`` (True = may attend): ``causal(i, j) and token(b, j)``. Delta Attention is
position-dependent — the sinks are the first S keys, the anchors sit at multiples of G and the
dense tail is the last T rows — so running the op on a padded row with that mask would put the
sinks on padding (left padding) or the tail on padding (right padding). Each sequence must instead
be run on its own tokens, exactly as it would run unpadded. :func:`token_spans` recovers, for each
batch row, the contiguous span of real tokens, or says that the mask is something else.
"""

from __future__ import annotations

import torch

__all__ = ["token_spans"]


def token_spans(mask: torch.Tensor, *, causal: bool) -> list[tuple[int, int]] | None:
    """The span ``[start, end)`` of real tokens of each batch row, if ``mask`` is plain padding.

    Args:
        mask: bool ``[B, 1, N, N]`` (True = may attend), as built by ``transformers``' mask
            functions; a float or per-head mask is never read as padding.
        causal: whether the mask's structural part is causal (``j <= i``) or full.

    Returns:
        ``[(start_b, end_b)] * B`` when ``mask[b, 0, i, j] == structural(i, j) and start_b <= j < end_b``
        for every row (the key tokens of each row are one contiguous span: left or right
        padding, or none), else None: the caller must then apply the mask as it is.
    """
    if mask.dtype != torch.bool or mask.dim() != 4 or mask.shape[1] != 1 or mask.shape[2] != mask.shape[3]:
        return None
    n = mask.shape[-1]
    if n == 0:
        return [(0, 0)] * mask.shape[0]
    # Under "structural and key is a token", the last row sees every token key (causal or not).
    keys = mask[:, 0, -1, :]  # [B, N]
    counts = keys.sum(dim=-1)
    starts = torch.where(counts > 0, keys.int().argmax(dim=-1), torch.zeros_like(counts))
    positions = torch.arange(n, device=mask.device)
    spans_mask = (positions >= starts[:, None]) & (positions < (starts + counts)[:, None])
    if not torch.equal(spans_mask, keys):  # the tokens are not one contiguous span
        return None
    structural = torch.ones(n, n, dtype=torch.bool, device=mask.device)
    if causal:
        structural = torch.tril(structural)
    if not torch.equal(mask[:, 0], structural & keys[:, None, :]):
        return None
    return [(int(s), int(s + c)) for s, c in zip(starts.tolist(), counts.tolist())]
