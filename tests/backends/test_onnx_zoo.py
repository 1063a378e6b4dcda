"""Converted zoo models (random init) through export_onnx(config=...) and ONNX Runtime.

Each model is converted by ``delta_opt.optimize`` inside ``export_onnx``; the file must hold one
DeltaAttention node per converted site, and ONNX Runtime must match the converted program in
PyTorch at three sequence lengths from one export.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import onnx
import pytest
import torch
from torch.export import Dim

from delta_opt import DeltaConfig, export_onnx
from delta_opt.backends.onnx import count_delta_nodes, load_session

transformers = pytest.importorskip("transformers", reason="needs transformers (the hf extra)")

ATOL = 1e-4
# Small enough that the window, sinks, anchors and tail all matter at the test lengths.
CONFIG = DeltaConfig(window=8, sinks=2, stride=4, tail=4)
LENGTHS = (17, 40, 90)
HIDDEN = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64)


def _build(name: str) -> tuple[torch.nn.Module, int]:
    """(model, kv heads) with random weights."""
    T = transformers
    if name.startswith("llama"):
        config, cls, kv = T.LlamaConfig(vocab_size=64, num_key_value_heads=2, max_position_embeddings=128, **HIDDEN), T.LlamaForCausalLM, 2
    elif name == "gpt2":
        config, cls, kv = T.GPT2Config(vocab_size=64, n_embd=32, n_layer=2, n_head=4, n_positions=128, bos_token_id=0, eos_token_id=0), T.GPT2LMHeadModel, 4
    elif name == "bert":
        config, cls, kv = T.BertConfig(vocab_size=64, max_position_embeddings=128, **HIDDEN), T.BertModel, 4
    else:
        raise ValueError(name)
    torch.manual_seed(0)
    impl = "eager" if name.endswith("eager") else "sdpa"
    return cls._from_config(config, attn_implementation=impl).eval(), kv


def _inputs(name: str, batch: int, n: int, seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    inputs = {"input_ids": torch.randint(0, 64, (batch, n), generator=g)}
    if name == "bert":  # the second sequence is padded: a key-padding mask reaches the op
        mask = torch.ones(batch, n, dtype=torch.long)
        mask[-1, n // 2 :] = 0
        inputs["attention_mask"] = mask
    return inputs


@pytest.fixture(scope="module", params=["llama-gqa", "llama-gqa-eager", "gpt2", "bert"])
def converted(request, tmp_path_factory):
    name = request.param
    model, kv_heads = _build(name)
    example: dict[str, Any] = _inputs(name, batch=2, n=40, seed=0)
    seq = Dim("seq", max=128)
    dims: dict[str, Any] = {key: {0: Dim("batch"), 1: seq} for key in example}
    if name != "bert":
        example["use_cache"], dims["use_cache"] = False, None
    path = tmp_path_factory.mktemp("zoo") / f"{name}.onnx"
    return name, kv_heads, export_onnx(model, example, path, config=CONFIG, dynamic_shapes=dims)


def test_one_node_per_converted_site(converted) -> None:
    name, _, result = converted
    model = onnx.load(str(result.path))
    onnx.checker.check_model(model, full_check=True)
    assert result.conversion.num_converted == 2, str(result.conversion)  # one per layer
    assert count_delta_nodes(model) == result.delta_nodes == result.delta_sites == result.conversion.num_converted


def test_onnx_runtime_matches_the_converted_program(converted) -> None:
    name, _, result = converted
    sess = load_session(result.path)
    names = [i.name for i in sess.get_inputs()]
    reference = result.program.module()
    for n, batch in zip(LENGTHS, (2, 1, 2)):
        feed = _inputs(name, batch, n, seed=n)
        with torch.no_grad():
            expected = reference(**feed, **({} if name == "bert" else {"use_cache": False}))
        if isinstance(expected, torch.Tensor):
            expected = (expected,)
        elif hasattr(expected, "values"):  # transformers' ModelOutput
            expected = tuple(v for v in expected.values() if isinstance(v, torch.Tensor))
        got = sess.run(None, {k: v.numpy() for k, v in feed.items() if k in names})
        assert len(got) == len(expected)
        for a, b in zip(got, expected):
            assert np.abs(a - b.numpy()).max() <= ATOL, (name, n)


def test_per_layer_per_head_plans_export_and_match(tmp_path) -> None:
    """A config as calibration writes it: taylor by default, a per-head plan on layer 1."""
    model, _ = _build("llama-gqa")
    config = DeltaConfig(window=8, sinks=2, stride=4, tail=4, correction="taylor", layer_plans={1: {"corrections": ["none", "taylor", "paper", "taylor"]}})
    example: dict[str, Any] = {**_inputs("llama-gqa", batch=2, n=40, seed=0), "use_cache": False}
    dims: dict[str, Any] = {"input_ids": {0: Dim("batch"), 1: Dim("seq", max=128)}, "use_cache": None}
    result = export_onnx(model, example, tmp_path / "plans.onnx", config=config, dynamic_shapes=dims)
    nodes = [n for n in onnx.load(str(result.path)).graph.node if n.op_type == "DeltaAttention"]
    codes = [next(onnx.helper.get_attribute_value(a) for a in n.attribute if a.name == "correction") for n in nodes]
    assert sorted(codes) == [[1, 2, 0, 2], [2]]
    sess = load_session(result.path)
    reference = result.program.module()
    for n, batch in ((17, 2), (90, 1)):
        feed = _inputs("llama-gqa", batch, n, seed=n)
        with torch.no_grad():
            expected = reference(**feed, use_cache=False).logits
        got = sess.run(None, {k: v.numpy() for k, v in feed.items()})[0]
        assert np.abs(got - expected.numpy()).max() <= ATOL, n
