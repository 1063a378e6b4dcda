"""MODEL forms: factories (module or file), saved programs, Hugging Face folders, and what is refused."""

from __future__ import annotations

import json
import textwrap

import pytest
import torch

from delta_opt.cli.errors import CliError
from delta_opt.cli.main import main
from delta_opt.cli.models import load_model
from delta_opt.cli.settings import InputSettings

FACTORIES = textwrap.dedent(
    """
    import torch
    import torch.nn.functional as F
    from torch import nn


    class Attention(nn.Module):
        def __init__(self, dim=32, heads=4):
            super().__init__()
            self.heads = heads
            self.qkv = nn.Linear(dim, 3 * dim)
            self.out = nn.Linear(dim, dim)

        def forward(self, x):
            b, n, d = x.shape
            q, k, v = self.qkv(x).view(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
            return self.out(y.transpose(1, 2).reshape(b, n, d))


    class Branchy(nn.Module):
        def forward(self, x):
            if x.sum() > 0:  # data-dependent control flow: torch.export cannot trace this
                return x * 2
            return x


    def build(seq_len=64, batch=1):
        return Attention(), (torch.randn(batch, seq_len, 32),)


    def build_fixed():
        return Attention(), {"x": torch.randn(1, 64, 32)}


    def not_a_pair():
        return Attention()


    def branchy():
        return Branchy(), (torch.randn(1, 8),)
    """
)


@pytest.fixture
def factories(tmp_path, monkeypatch):
    (tmp_path / "cli_test_factories.py").write_text(FACTORIES)
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    return tmp_path


def _load(spec, **settings):
    return load_model(spec, InputSettings(**settings))


def test_factory_from_a_file_takes_seq_len_and_batch(factories):
    loaded = _load("cli_test_factories.py:build", seq_len=48, batch=2)
    assert loaded.kind == "factory" and not loaded.model.training
    assert loaded.args[0].shape == (2, 48, 32)


def test_factory_is_seeded(factories):
    a, b = _load("cli_test_factories:build", seed=3), _load("cli_test_factories:build", seed=3)
    c = _load("cli_test_factories:build", seed=4)
    assert torch.equal(a.model.qkv.weight, b.model.qkv.weight) and torch.equal(a.args[0], b.args[0])
    assert not torch.equal(a.model.qkv.weight, c.model.qkv.weight)


def test_inspect_a_module_factory(factories, capsys):
    assert main(["inspect", "cli_test_factories:build_fixed", "--window", "8", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["inputs"] == {"x": {"shape": [1, 64, 32], "dtype": "float32"}}
    assert data["report"]["num_sites"] == 1 and data["report"]["num_converted"] == 1
    assert data["report"]["sites"][0]["causal"] is True and data["report"]["config"]["window"] == 8


@pytest.mark.parametrize(
    ("spec", "settings", "phrase"),
    [
        (
            "cli_test_factories:build_fixed",
            {"seq_len": 32},
            "--seq-len cannot apply: the factory cli_test_factories:build_fixed takes no 'seq_len' argument",
        ),
        ("cli_test_factories:not_a_pair", {}, "must return (model, example_inputs)"),
        ("cli_test_factories:nothing", {}, "has no attribute 'nothing'"),
        ("no_such_module_xyz:build", {}, "cannot import 'no_such_module_xyz'"),
        ("missing.py:build", {}, "file 'missing.py' does not exist"),
        ("model.bin", {}, "is not a recognised form"),
        ("missing.pt2", {}, "MODEL file 'missing.pt2' does not exist"),
        ("hf:no/such/folder", {}, "does not exist"),
        ("", {}, "MODEL is empty"),
    ],
)
def test_refused_models(factories, spec, settings, phrase):
    with pytest.raises(CliError) as info:
        _load(spec, **settings)
    assert phrase in str(info.value)


def test_onnx_only_where_it_makes_sense(factories):
    (factories / "m.onnx").write_bytes(b"")
    assert load_model("m.onnx", InputSettings(), allow_onnx=True).kind == "onnx"
    with pytest.raises(CliError, match="is an ONNX file; delta-opt check needs a PyTorch model"):
        load_model("m.onnx", InputSettings(), command="delta-opt check")


def test_a_model_torch_export_cannot_trace_is_one_line(factories, capsys):
    assert main(["inspect", "cli_test_factories:branchy"]) == 2
    err = capsys.readouterr().err
    error_lines = [line for line in err.splitlines() if "error:" in line]
    assert len(error_lines) == 1 and "Traceback" not in err
    assert "torch.export could not trace Branchy" in error_lines[0] and "--debug" in error_lines[0]


def test_inputs_file_replaces_the_example_inputs(factories):
    torch.save({"x": torch.ones(1, 40, 32)}, factories / "inputs.pt")
    loaded = load_model("cli_test_factories:build", InputSettings(), inputs_file=str(factories / "inputs.pt"))
    assert loaded.kwargs["x"].shape == (1, 40, 32) and loaded.args == ()
    (factories / "bad.pt").write_text("not a tensor file")
    with pytest.raises(CliError, match="could not be read with torch.load"):
        load_model("cli_test_factories:build", InputSettings(), inputs_file=str(factories / "bad.pt"))


@pytest.fixture(scope="module")
def hf_folder(tmp_path_factory):
    from delta_opt.zoo import tiny_llama

    folder = tmp_path_factory.mktemp("hf") / "tiny-llama"
    tiny_llama(seq_len=8)[0].save_pretrained(folder)
    return folder


def test_hf_folder_with_generated_tokens(hf_folder):
    loaded = load_model(f"hf:{hf_folder}", InputSettings(seq_len=40, batch=2, seed=1))
    assert loaded.kind == "hf" and type(loaded.model).__name__ == "LlamaForCausalLM"
    ids = loaded.kwargs["input_ids"]
    assert ids.shape == (2, 40) and loaded.kwargs["use_cache"] is False
    assert int(ids.max()) < loaded.model.config.vocab_size
    again = load_model(f"hf:{hf_folder}", InputSettings(seq_len=40, batch=2, seed=1))
    assert torch.equal(ids, again.kwargs["input_ids"])


def test_hf_folder_hints(hf_folder, tmp_path):
    with pytest.raises(CliError, match="a Hugging Face checkpoint\\? write hf:"):
        load_model(str(hf_folder), InputSettings())
    with pytest.raises(CliError, match="has no config.json"):
        load_model(f"hf:{tmp_path}", InputSettings())
    with pytest.raises(CliError, match="--text applies to hf: models"):
        load_model("delta_opt.zoo:tiny_llama", InputSettings(), text_file="x.txt")


@pytest.mark.real_model
@pytest.mark.slow
def test_hf_checkpoint_with_text(smollm2, tmp_path, capsys, monkeypatch):
    """SmolLM2-135M as hf:DIR with --text: its own tokenizer, the first --seq-len tokens."""
    from delta_opt.models.smollm2 import cache_dir

    folder = cache_dir() / "smollm2-135m-instruct-hf"  # written by load_smollm2 (the fixture)
    _, tokenizer = smollm2
    text = tmp_path / "text.txt"
    text.write_text(textwrap.dedent(FACTORIES) * 4)
    monkeypatch.chdir(tmp_path)
    argv = ["inspect", f"hf:{folder}", "--text", str(text), "--seq-len", "200", "--window", "64", "--json"]
    assert main(argv) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["inputs"]["input_ids"]["shape"] == [1, 200]
    assert data["report"]["num_converted"] == 30
    loaded = load_model(f"hf:{folder}", InputSettings(seq_len=200), text_file=str(text))
    expected = tokenizer(text.read_text(), return_tensors="pt").input_ids[:, :200]
    assert torch.equal(loaded.kwargs["input_ids"], expected)
    with pytest.raises(CliError, match="fewer than --seq-len 100000"):
        load_model(f"hf:{folder}", InputSettings(seq_len=100000), text_file=str(text))
