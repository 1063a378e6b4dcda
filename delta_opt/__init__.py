"""delta_opt: convert the attention of trained PyTorch models to Delta Attention.

Public API::

    delta_opt.delta_attention(q, k, v, attn_mask=None, *, causal, window, sinks, stride, tail, scale, impl)
    delta_opt.DeltaConfig(window=..., sinks=..., stride=..., tail=..., min_seq_len=..., impl=...)
    delta_opt.apply_to_hf(model, config)      # a transformers model's prefill -> delta attention
    delta_opt.eval                            # fidelity metrics, variants, probes (lazy)

Importing the package registers the op ``delta_opt::delta_attention`` with torch.
"""

from .config import DeltaConfig, Impl
from .ops import delta_attention

__version__ = "0.1.0"

__all__ = ["DeltaConfig", "Impl", "apply_to_hf", "delta_attention", "eval", "__version__"]


def __getattr__(name: str):
    # Lazy: the Hugging Face integration and the evaluation harness are optional extras.
    if name == "apply_to_hf":
        from .integrations.transformers import apply_to_hf

        return apply_to_hf
    if name == "eval":
        import importlib

        return importlib.import_module(".eval", __name__)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
