"""The model zoo of the pass tests: tiny random-init models and what the passes must find in each.

Each :class:`ZooEntry` builds a model (eval mode, seeded) with its inputs, states the exact site
counts and the expected report contents, and names its oracle (see :mod:`tests.passes.oracles`).
Sequences are 24 tokens (26 for ViT) so that the sparse test config (window 4, sinks 2,
stride 4, tail 3) really drops keys.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch import nn

from . import oracles
from .models import ClassifierWithRouter, DecoderWithCrossAttention, HandAttention, SdpaAttention, Stack

N = 24
DIM = 32


@dataclass
class ZooEntry:
    """A model and what converting it must give.

    Attributes:
        sites / converted / unmatched: exact counts in the report.
        heads / kv_heads: of every converted site.
        mask: mask kind of every converted site in the ``export()`` graph; ``mask_decomposed``
            where ``run_decompositions()`` spells it differently (an SDPA bool mask becomes additive).
        reason: a phrase every skipped site's reason contains.
        modules: module-path prefix of every site.
    """

    name: str
    build: Callable[[], tuple[nn.Module, dict[str, Any]]]
    oracle: Callable[[nn.Module, dict[str, Any]], nn.Module]
    sites: int
    converted: int
    heads: int
    kv_heads: int
    mask: str
    modules: str = ""
    unmatched: int = 0
    mask_decomposed: str | None = None
    reason: str | None = None
    context: Callable[[], Any] = contextlib.nullcontext  # what the oracle needs to run under

    def __str__(self) -> str:
        return self.name


def _ids(batch: int = 1, n: int = N) -> dict[str, torch.Tensor]:
    return {"input_ids": torch.randint(0, 64, (batch, n), generator=torch.Generator().manual_seed(1))}


def _hf(model_name: str, impl: str, **extra: Any) -> Callable[[], tuple[nn.Module, dict[str, Any]]]:
    def build():
        import transformers as T

        common = dict(hidden_size=DIM, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64)
        if model_name == "llama":
            config, cls = T.LlamaConfig(vocab_size=64, num_key_value_heads=2, **common), T.LlamaForCausalLM
        elif model_name == "mistral":
            config = T.MistralConfig(vocab_size=64, num_key_value_heads=2, sliding_window=6, **common)
            cls = T.MistralForCausalLM
        elif model_name == "qwen2":
            config, cls = T.Qwen2Config(vocab_size=64, num_key_value_heads=2, **common), T.Qwen2ForCausalLM
        elif model_name == "gpt2":
            config = T.GPT2Config(vocab_size=64, n_embd=DIM, n_layer=2, n_head=4, n_positions=64, bos_token_id=0, eos_token_id=0)
            cls = T.GPT2LMHeadModel
        elif model_name == "bert":
            config, cls = T.BertConfig(vocab_size=64, max_position_embeddings=64, **common), T.BertModel
        elif model_name == "vit":
            config, cls = T.ViTConfig(image_size=20, patch_size=4, num_channels=3, **common), T.ViTModel
        else:
            raise ValueError(model_name)
        torch.manual_seed(0)
        model = cls._from_config(config, attn_implementation=impl).eval()
        if model_name == "vit":
            inputs = {"pixel_values": torch.randn(1, 3, 20, 20, generator=torch.Generator().manual_seed(1))}
        else:
            inputs = _ids()
            if model_name != "bert":
                inputs["use_cache"] = False
        inputs.update(extra)
        return model, inputs

    return build


def _module(make: Callable[[], nn.Module], batch: int = 1, arg: str = "x"):
    def build():
        torch.manual_seed(0)
        model = make().eval()
        return model, {arg: torch.randn(batch, N, DIM, generator=torch.Generator().manual_seed(1))}

    return build


class _MHA(nn.Module):
    """nn.MultiheadAttention with its default need_weights=True and a causal float mask."""

    def __init__(self):
        super().__init__()
        self.attn = nn.MultiheadAttention(DIM, 4, batch_first=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mask = nn.Transformer.generate_square_subsequent_mask(x.shape[1])
        return self.attn(x, x, x, attn_mask=mask)[0]


def _encoder() -> nn.Module:
    layer = nn.TransformerEncoderLayer(DIM, 4, 64, dropout=0.1, batch_first=True)
    return nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)


def _cross() -> tuple[nn.Module, dict[str, Any]]:
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(1)
    model = DecoderWithCrossAttention(DIM).eval()
    return model, {"x": torch.randn(1, N, DIM, generator=g), "memory": torch.randn(1, 7, DIM, generator=g)}


HF_MODELS = [
    # name, heads, kv heads, mask kind (export / decomposed)
    ("llama", 4, 2, "causal", None),
    ("mistral", 4, 2, "additive", None),  # sliding window 6 < N: a real mask, passed through
    ("qwen2", 4, 2, "causal", None),
    ("gpt2", 4, 4, "causal", None),
    ("bert", 4, 4, "none", None),
    ("vit", 4, 4, "none", None),
]

ZOO: list[ZooEntry] = []
for _name, _heads, _kv, _mask, _ in HF_MODELS:
    for _impl in ("eager", "sdpa"):
        sdpa_mistral = _name == "mistral" and _impl == "sdpa"
        ZOO.append(
            ZooEntry(
                f"{_name}-{_impl}",
                _hf(_name, _impl),
                oracles.hf_reference,
                sites=2,
                converted=2,
                heads=_heads,
                kv_heads=_kv,
                mask="bool" if sdpa_mistral else _mask,
                mask_decomposed="additive" if sdpa_mistral else None,
            )
        )

ZOO += [
    ZooEntry("multihead-attention", _module(_MHA, batch=2), oracles.mha_reference, 1, 1, 8, 8, "causal", "attn"),
    ZooEntry(
        "transformer-encoder",
        _module(_encoder, batch=2, arg="src"),
        oracles.mha_reference,
        2,
        2,
        4,
        4,
        "none",
        "layers.",
        context=oracles.mha_fastpath_disabled,
    ),
    ZooEntry(
        "matmul-softmax-additive-mask",
        _module(lambda: Stack(lambda: HandAttention(DIM, 4, 2, mask="alibi"))),
        oracles.hand_reference,
        2,
        2,
        4,
        2,
        "additive",
        "layers.",
    ),
    ZooEntry(
        "sdpa-enable-gqa",
        _module(lambda: Stack(lambda: SdpaAttention(DIM, 4, 2, gqa="enable_gqa", mask="causal"))),
        oracles.hand_reference,
        2,
        2,
        4,
        2,
        "causal",
        "layers.",
    ),
    ZooEntry(
        "non-attention-softmax",
        _module(ClassifierWithRouter),
        oracles.hand_reference,
        1,
        1,
        4,
        4,
        "none",
        "block.attn",
        unmatched=2,
    ),
    ZooEntry(
        "llama-output-attentions",
        _hf("llama", "eager", output_attentions=True),
        oracles.no_conversion,
        2,
        0,
        4,
        2,
        "causal",
        "model.layers.",
        reason="attention weights are also used",
    ),
    ZooEntry(
        "cross-attention",
        _cross,
        oracles.hand_reference,
        2,
        1,
        4,
        4,
        "causal",
        "",
        reason="cross-attention",
    ),
]


def first_tensor(out: Any) -> torch.Tensor:
    """The main output: a tensor, element 0 of a tuple, or a ModelOutput's first field."""
    while not isinstance(out, torch.Tensor):
        out = out[0]
    return out


def run(model: Any, inputs: dict[str, Any]) -> torch.Tensor:
    """``model(**inputs)``'s main output; ``model`` may be an ExportedProgram."""
    if isinstance(model, torch.export.ExportedProgram):
        model = model.module()
    with torch.no_grad():
        return first_tensor(model(**inputs))


def max_abs(a: torch.Tensor, b: torch.Tensor) -> float:
    assert a.shape == b.shape, (a.shape, b.shape)
    return (a.double() - b.double()).abs().max().item()
