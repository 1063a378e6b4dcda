"""delta_opt: convert the attention of trained PyTorch models to Delta Attention.

Public API::

    delta_opt.delta_attention(q, k, v, attn_mask=None, *, causal, window, sinks, stride, tail, scale, impl)
    delta_opt.DeltaConfig(window=..., sinks=..., stride=..., tail=..., min_seq_len=..., impl=...)

Importing the package registers the op ``delta_opt::delta_attention`` with torch.
"""

from .config import DeltaConfig, Impl
from .ops import delta_attention

__version__ = "0.1.0"

__all__ = ["DeltaConfig", "Impl", "delta_attention", "__version__"]
