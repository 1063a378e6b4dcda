"""The ``delta_opt::delta_attention`` op and its implementations.

- :mod:`.reference` — the spec, dense-masked (the oracle for every test);
- :mod:`.blocked` — memory-lean PyTorch implementation (CPU default, GPU fallback);
- :mod:`.triton` — fused Triton kernels (the CUDA default; Triton itself is imported on first use);
- :mod:`.op` — the ``torch.library`` declaration and the dispatch by ``impl``;
- :mod:`.cost` — exact FLOP counts of dense vs delta attention.
"""

from .blocked import delta_attention_blocked
from .op import OP_NAME, delta_attention, resolve_impl
from .reference import delta_attention_reference
from .triton import delta_attention_triton
from .triton import register as _register_triton

_register_triton()

__all__ = [
    "OP_NAME",
    "delta_attention",
    "delta_attention_blocked",
    "delta_attention_reference",
    "delta_attention_triton",
    "resolve_impl",
]
