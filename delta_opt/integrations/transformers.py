"""Delta Attention inside Hugging Face ``transformers`` models: the ``"delta"`` attention implementation.

``transformers`` (tested with 5.24) looks attention functions up by name in ``AttentionInterface``; this
module registers one named ``"delta"`` and :func:`apply_to_hf` switches a loaded model to it::

    conversion = delta_opt.apply_to_hf(model, DeltaConfig(window=256, sinks=64, stride=32))
    model.generate(ids, max_new_tokens=32)      # prefill: delta attention; decode steps: dense
    conversion.restore()                        # back to the previous implementation

    with delta_opt.apply_to_hf(model, config):  # or scoped
        ...

What runs where:

- prefill (query length == key length >= ``config.min_seq_len``) of a layer without its own
  sliding window: ``delta_opt::delta_attention`` on the un-repeated K/V (grouped-query heads read
  their kv head, never a copy);
- decode steps and chunked prefill (query length != key length), short prompts, and layers that
  the model gives a sliding window of their own (Gemma 2/3, Qwen 2/3 with ``layer_types``,
  Mistral, GPT-OSS, ...): ``transformers``' own SDPA attention with the model's mask, unchanged.
  ``generate()`` with a KV cache therefore works as before: the cache holds the same keys and
  values, only the prefill outputs are approximated.
- a padded batch: each sequence runs on its own tokens, exactly as it would unpadded (the 4-D
  mask is read back into one token span per row, see :mod:`.padding`); padding rows output zeros.
  A mask that is not plain padding (packed sequences, a custom 4-D mask) is passed to the op as it
  is, with positions counted from the start of the row.

Registering the name is global to ``transformers`` (that is how its interface works) and is done
on first use, not at import. The per-model state lives on the model's attention modules and is
removed by :meth:`HFConversion.restore`.
"""

from __future__ import annotations

import dataclasses
import weakref
from typing import Any, Callable, Protocol

import torch
import torch.nn.functional as F

from ..config import DeltaConfig
from ..ops import delta_attention
from .padding import token_spans

__all__ = [
    "ATTN_IMPLEMENTATION",
    "AttentionCore",
    "HFConversion",
    "LayerPlan",
    "apply_to_hf",
    "delta_attention_forward",
    "delta_core",
    "dense_attention",
    "register",
]

ATTN_IMPLEMENTATION = "delta"
_STATE_ATTR = "_delta_opt_state"


class AttentionCore(Protocol):
    """The attention computed on one prefill: q [B, Hq, N, D], k/v [B, Hkv, N, D/Dv] -> [B, Hq, N, Dv].

    ``attn_mask`` is None or a mask in the op's form (bool True = may attend, or additive),
    broadcastable to [B, Hq, N, N]; ``layer`` is the attention module's ``layer_idx`` (a
    calibrated config's per-layer plan applies by it).
    """

    def __call__(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        attn_mask: torch.Tensor | None,
        *,
        causal: bool,
        scale: float | None,
        layer: int | None,
    ) -> torch.Tensor: ...


class Observer(Protocol):
    """Called after every prefill attention; ``delta_opt.eval`` reads per-layer outputs through it
    without depending on a model's module names.

    q [B, Hq, N, D], k/v [B, Hkv, N, D/Dv], out [B, Hq, N, Dv]; ``causal`` and ``scale`` as used.
    """

    def __call__(
        self,
        module: torch.nn.Module,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        out: torch.Tensor,
        *,
        causal: bool,
        scale: float | None,
    ) -> None: ...


def delta_core(config: DeltaConfig) -> AttentionCore:
    """The core that ``"delta"`` runs by default: ``delta_opt::delta_attention`` with ``config``
    (and the layer's plan, when ``config`` has one)."""

    def core(q, k, v, attn_mask, *, causal, scale, layer):
        return delta_attention(q, k, v, attn_mask, causal=causal, scale=scale, **config.op_kwargs(layer, q.shape[1]))

    return core


def dense_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, causal: bool, scale: float | None
) -> torch.Tensor:
    """Dense attention of an unpadded segment: q [B, Hq, N, D], k/v [B, Hkv, N, D/Dv] -> [B, Hq, N, Dv]."""
    return F.scaled_dot_product_attention(q, k, v, is_causal=causal, scale=scale, enable_gqa=q.shape[1] != k.shape[1])


@dataclasses.dataclass
class _ModelState:
    """What the ``"delta"`` function needs for one converted model (shared by its attention modules)."""

    config: DeltaConfig
    core: AttentionCore
    observers: list[Observer] = dataclasses.field(default_factory=list)
    # One-entry cache of token_spans(): the same mask object reaches every layer of a forward.
    _spans_key: tuple[Any, int, bool] | None = None
    _spans: list[tuple[int, int]] | None = None

    def spans(self, mask: torch.Tensor, causal: bool) -> list[tuple[int, int]] | None:
        key = self._spans_key
        if key is not None and key[0]() is mask and key[1] == mask._version and key[2] == causal:
            return self._spans
        spans = token_spans(mask, causal=causal)
        self._spans_key, self._spans = (weakref.ref(mask), mask._version, causal), spans
        return spans


@dataclasses.dataclass(frozen=True)
class LayerPlan:
    """What :func:`apply_to_hf` decided for one attention module."""

    name: str  # the module's qualified name in the model
    layer_idx: int | None
    delta: bool  # True: prefill runs delta attention; False: the layer keeps its own window
    reason: str  # why, in words


class HFConversion:
    """A model switched to ``"delta"`` by :func:`apply_to_hf`; :meth:`restore` (or leaving a
    ``with`` block) switches it back to :attr:`previous_implementation`."""

    def __init__(self, model: Any, previous: str, state: _ModelState, layers: list[LayerPlan]) -> None:
        self.model = model
        self.previous_implementation = previous
        self.layers = layers
        self._state = state
        self._active = True

    @property
    def config(self) -> DeltaConfig:
        return self._state.config

    @property
    def delta_layers(self) -> list[LayerPlan]:
        return [plan for plan in self.layers if plan.delta]

    @property
    def active(self) -> bool:
        return self._active

    def set_core(self, core: AttentionCore) -> None:
        """Replace the attention computed on prefill (``delta_opt.eval`` uses it to compare variants)."""
        self._state.core = core

    def add_observer(self, observer: Observer) -> Callable[[], None]:
        """Call ``observer(module, q, k, v, out, causal=, scale=)`` after every prefill attention;
        returns a function that removes it."""
        self._state.observers.append(observer)
        return lambda: self._state.observers.remove(observer)

    def restore(self) -> str:
        """Switch the model back to the implementation it had; returns that name."""
        if self._active:
            self.model.set_attn_implementation(self.previous_implementation)
            for module in self.model.modules():
                if getattr(module, _STATE_ATTR, None) is self._state:
                    delattr(module, _STATE_ATTR)
            self._active = False
        return self.previous_implementation

    def __enter__(self) -> "HFConversion":
        return self

    def __exit__(self, *exc: object) -> None:
        self.restore()

    def summary(self) -> dict[str, Any]:
        """JSON-serialisable report: the config, the previous implementation, and each layer's plan."""
        return {
            "config": self.config.to_dict(),
            "previous_implementation": self.previous_implementation,
            "delta_layers": len(self.delta_layers),
            "layers": [dataclasses.asdict(plan) for plan in self.layers],
        }


def _unsupported(name: str, why: str) -> ValueError:
    return ValueError(f"the 'delta' attention implementation does not support {name}: {why}")


def delta_attention_forward(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    is_causal: bool | None = None,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """The ``"delta"`` entry of ``AttentionInterface`` (same contract as ``sdpa_attention_forward``).

    Args:
        module: the attention module; carries the state set by :func:`apply_to_hf`.
        query: [B, Hq, Nq, D]; key: [B, Hkv, Nk, D]; value: [B, Hkv, Nk, Dv] (not repeated).
        attention_mask: None (plain causal) or the bool [B, 1, Nq, Nk] mask of ``sdpa_mask``.

    Returns:
        ([B, Nq, Hq, Dv], None) — no attention weights.
    """
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    state: _ModelState | None = getattr(module, _STATE_ATTR, None)
    if state is None:
        raise ValueError(
            f"{type(module).__name__} runs attn_implementation='delta' without a DeltaConfig: "
            "switch models to it with delta_opt.apply_to_hf(model, config)"
        )
    for name in ("softcap", "s_aux", "position_bias"):
        if kwargs.get(name) is not None:
            raise _unsupported(f"`{name}`", "the op has no such term")
    q_len, kv_len = query.shape[2], key.shape[2]
    prefill = q_len == kv_len and q_len > 1 and kwargs.get("sliding_window") is None
    if not prefill:
        # Decode steps, chunked prefill and the model's own sliding-window layers: unchanged.
        return sdpa_attention_forward(
            module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, is_causal=is_causal, **kwargs
        )
    if dropout > 0.0 and module.training:
        raise _unsupported("attention dropout", "call model.eval() (delta attention is for inference)")
    causal = bool(is_causal if is_causal is not None else getattr(module, "is_causal", True))
    layer = getattr(module, "layer_idx", None)
    out = _prefill(state, query, key, value, attention_mask, causal=causal, scale=scaling, layer=layer)
    for observer in state.observers:
        observer(module, query, key, value, out, causal=causal, scale=scaling)
    return out.transpose(1, 2).contiguous(), None


def _prefill(
    state: _ModelState,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    mask: torch.Tensor | None,
    *,
    causal: bool,
    scale: float | None,
    layer: int | None,
) -> torch.Tensor:
    """[B, Hq, N, Dv]: each sequence on its own token span; a mask that is not padding goes to the core."""
    n = q.shape[2]
    spans = [(0, n)] * q.shape[0] if mask is None else state.spans(mask, causal)
    if spans is None:
        return state.core(q, k, v, mask, causal=causal, scale=scale, layer=layer)
    if all(span == (0, n) for span in spans):
        return _segment(state, q, k, v, causal=causal, scale=scale, layer=layer)
    out = q.new_zeros(q.shape[0], q.shape[1], n, v.shape[3])  # padding rows: zeros
    for span in sorted(set(spans)):
        rows = [b for b, s in enumerate(spans) if s == span]
        start, end = span
        if end == start:
            continue
        idx = torch.tensor(rows, device=q.device)
        seg = (t.index_select(0, idx)[:, :, start:end] for t in (q, k, v))
        out[idx, :, start:end] = _segment(state, *seg, causal=causal, scale=scale, layer=layer)
    return out


def _segment(
    state: _ModelState,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    causal: bool,
    scale: float | None,
    layer: int | None,
) -> torch.Tensor:
    if q.shape[2] < state.config.min_seq_len:
        return dense_attention(q, k, v, causal=causal, scale=scale)  # nothing to save on short prompts
    return state.core(q, k, v, None, causal=causal, scale=scale, layer=layer)


def register() -> None:
    """Register ``"delta"`` with ``transformers``' attention and mask interfaces (idempotent).

    The mask interface entry is ``sdpa_mask``: a bool [B, 1, Nq, Nk] mask, or None for a plain
    causal batch — the forms :func:`delta_attention_forward` reads.
    """
    try:
        from transformers import AttentionInterface
        from transformers.masking_utils import AttentionMaskInterface, sdpa_mask
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError(
            "the Hugging Face integration needs a transformers with AttentionInterface and AttentionMaskInterface "
            f"(tested with 5.x; pip install 'delta-opt[hf]'): {e}"
        ) from None
    AttentionInterface.register(ATTN_IMPLEMENTATION, delta_attention_forward)
    AttentionMaskInterface.register(ATTN_IMPLEMENTATION, sdpa_mask)


def _attention_modules(model: torch.nn.Module) -> list[tuple[str, torch.nn.Module]]:
    """The modules that call ``AttentionInterface``: those holding the config and a layer index."""
    found = []
    for name, module in model.named_modules():
        if type(module).__name__.endswith("Attention") and hasattr(module, "config") and hasattr(module, "layer_idx"):
            found.append((name, module))
    return found


def _own_window(module: torch.nn.Module, config: Any) -> int | None:
    """The sliding window the model gives this layer, if any (it passes it as ``sliding_window=``)."""
    if hasattr(module, "sliding_window"):
        return module.sliding_window
    layer_types = getattr(config, "layer_types", None)
    idx = getattr(module, "layer_idx", None)
    if layer_types is not None and idx is not None and idx < len(layer_types):
        return getattr(config, "sliding_window", None) if layer_types[idx] == "sliding_attention" else None
    return getattr(config, "sliding_window", None)


def apply_to_hf(model: Any, config: DeltaConfig) -> HFConversion:
    """Switch a loaded ``transformers`` model to delta attention on prefill.

    Args:
        model: a ``PreTrainedModel`` whose attention uses ``AttentionInterface`` (Llama, Mistral,
            Qwen, Gemma, ... — every model that accepts ``set_attn_implementation``).
        config: the :class:`~delta_opt.DeltaConfig` (window, sinks, stride, tail, min_seq_len, impl).

    Returns:
        An :class:`HFConversion`: ``previous_implementation``, the per-layer plan (``layers``),
        ``restore()``, and context-manager use (``with apply_to_hf(model, config): ...``).

    Raises:
        ValueError: ``config`` is not a DeltaConfig, the model cannot switch its attention
            implementation, is already converted, uses a term the op lacks (logit soft-capping),
            or has no attention layer left for delta (every layer has its own window).
    """
    if not isinstance(config, DeltaConfig):
        raise ValueError(f"config must be a delta_opt.DeltaConfig; got {type(config).__name__}")
    if not (hasattr(model, "set_attn_implementation") and hasattr(model, "config")):
        raise ValueError(f"model must be a transformers PreTrainedModel; got {type(model).__name__}")
    can_set = getattr(model, "_can_set_attn_implementation", None)  # absent from older transformers
    if can_set is not None and not can_set():
        raise ValueError(
            f"{type(model).__name__} cannot switch its attention implementation (its attention does not go "
            "through transformers' AttentionInterface)"
        )
    if getattr(model.config, "attn_logit_softcapping", None) is not None:
        raise _unsupported("attention logit soft-capping", f"{type(model).__name__} sets attn_logit_softcapping")
    modules = _attention_modules(model)
    if not modules:
        raise ValueError(
            f"found no attention module in {type(model).__name__} (looked for *Attention modules with a layer_idx)"
        )
    if any(hasattr(module, _STATE_ATTR) for _, module in modules):
        raise ValueError("the model is already converted to 'delta'; restore() the previous conversion first")

    plans = []
    for name, module in modules:
        window = _own_window(module, getattr(module, "config", model.config))
        if window is not None:
            plans.append(LayerPlan(name, module.layer_idx, False, f"keeps its own sliding window of {window}"))
        else:
            plans.append(LayerPlan(name, module.layer_idx, True, "global attention: delta on prefill"))
    if not any(plan.delta for plan in plans):
        raise ValueError(
            f"every attention layer of {type(model).__name__} has its own sliding window; delta attention applies "
            "to global layers only and there are none"
        )

    register()
    previous = model.config._attn_implementation
    state = _ModelState(config=config, core=delta_core(config))
    for _, module in modules:
        setattr(module, _STATE_ATTR, state)
    try:
        model.set_attn_implementation(ATTN_IMPLEMENTATION)
    except Exception:
        for _, module in modules:
            delattr(module, _STATE_ATTR)
        raise
    if model.config._attn_implementation != ATTN_IMPLEMENTATION:  # transformers only warns in some cases
        for _, module in modules:
            delattr(module, _STATE_ATTR)
        raise ValueError(f"{type(model).__name__} did not accept attn_implementation='delta'")
    return HFConversion(model, previous, state, plans)
