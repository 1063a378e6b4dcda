"""delta_opt: convert the attention of trained PyTorch models to Delta Attention.

Public API::

    delta_opt.delta_attention(q, k, v, attn_mask=None, *, causal, window, sinks, stride, tail, scale, impl)
    delta_opt.DeltaConfig(window=..., sinks=..., stride=..., tail=..., min_seq_len=..., impl=...)
    delta_opt.optimize(model, example_inputs, config, *, dynamic_shapes=None) -> (ExportedProgram, Report)

Importing the package registers the op ``delta_opt::delta_attention`` with torch.
"""

from .config import DeltaConfig, Impl
from .plan import Correction, LayerPlan
from .ops import delta_attention

__version__ = "0.1.0"

__all__ = ["Correction", "DeltaConfig", "Impl", "LayerPlan", "Report", "delta_attention", "optimize", "__version__"]


def __getattr__(name: str):
    # The passes import torch.export/fx machinery; load them on first use only.
    if name in ("optimize", "Report"):
        from . import passes

        return getattr(passes, name)
    raise AttributeError(f"module 'delta_opt' has no attribute {name!r}")
