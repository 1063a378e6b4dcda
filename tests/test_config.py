"""DeltaConfig: validation, serialisation round trips, TOML loading."""

from __future__ import annotations

import json

import pytest

import delta_opt
from delta_opt import DeltaConfig, Impl


def test_defaults_are_the_papers():
    config = DeltaConfig()
    assert (config.window, config.sinks, config.stride) == (2048, 1024, 64)
    assert config.tail is None and config.resolved_tail == 128
    assert DeltaConfig(stride=256).resolved_tail == 256
    assert config.impl is Impl.AUTO


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("window", 0, "window must be an integer >= 1; got 0"),
        ("window", 1.5, "window must be an integer >= 1; got 1.5"),
        ("window", True, "window must be an integer >= 1; got True"),
        ("sinks", -1, "sinks must be an integer >= 0; got -1"),
        ("stride", 0, "stride must be an integer >= 1; got 0"),
        ("tail", -5, "tail must be an integer >= 0; got -5"),
        ("min_seq_len", -1, "min_seq_len must be an integer >= 0"),
        ("impl", "cuda", "impl must be one of 'auto', 'reference', 'blocked', 'triton'; got 'cuda'"),
        ("dense_layers", 3, r"dense_layers must be a list of layer indices \(integers >= 0\); got 3"),
        ("dense_layers", [0, -1], r"dense_layers must be a list of layer indices \(integers >= 0\); got item -1"),
        ("dense_layers", [True], "got item True"),
        ("dense_modules", "model.layers.0.*", r"dense_modules must be a list of module-path globs \(non-empty strings\); got 'model"),
        ("dense_modules", ["ok", " "], "got item ' '"),
        ("dense_modules", [3], "got item 3"),
    ],
)
def test_bad_values_name_the_field_and_range(field, value, message):
    with pytest.raises(ValueError, match=message):
        DeltaConfig(**{field: value})


def test_impl_string_is_coerced_to_the_enum():
    assert DeltaConfig(impl="BLOCKED").impl is Impl.BLOCKED


def test_frozen():
    with pytest.raises(Exception):
        DeltaConfig().window = 3  # type: ignore[misc]


@pytest.mark.parametrize(
    "config",
    [
        DeltaConfig(),
        DeltaConfig(window=128, sinks=32, stride=16, tail=0, min_seq_len=512, impl="reference"),
        DeltaConfig(dense_layers=[0, 29], dense_modules=["model.layers.1.*", "*.cross_attn"]),
    ],
)
def test_dict_round_trip(config):
    data = config.to_dict()
    assert data["impl"] == config.impl.value  # plain values, ready for JSON/TOML
    assert isinstance(data["dense_layers"], list) and isinstance(data["dense_modules"], list)
    assert DeltaConfig.from_dict(json.loads(json.dumps(data))) == config
    assert hash(DeltaConfig.from_dict(data)) == hash(config)


def test_layer_filter_reasons():
    config = DeltaConfig(dense_layers=(0, 29), dense_modules=("*.cross_attn",))
    assert config.dense_layers == (0, 29)  # lists become tuples: the config stays hashable
    assert config.dense_reason("model.layers.29.self_attn", 29) == "kept dense by config: dense_layers contains 29"
    assert "dense_modules pattern '*.cross_attn'" in config.dense_reason("decoder.layers.3.cross_attn", 3)
    assert config.dense_reason("model.layers.3.self_attn", 3) is None
    assert config.dense_reason("head", None) is None


def test_layer_filter_from_toml(tmp_path):
    path = tmp_path / "delta-opt.toml"
    path.write_text('[attention]\nwindow = 256\ndense_layers = [0, 1]\ndense_modules = ["model.layers.2.*"]\n')
    config = DeltaConfig.from_toml(path, table="attention")
    assert config == DeltaConfig(window=256, dense_layers=(0, 1), dense_modules=("model.layers.2.*",))


def test_unknown_key_lists_the_valid_ones():
    with pytest.raises(ValueError, match="unknown DeltaConfig key\\(s\\) 'windw'; valid keys are window, sinks"):
        DeltaConfig.from_dict({"windw": 3})


def test_from_toml(tmp_path):
    path = tmp_path / "delta-opt.toml"
    path.write_text('window = 256\nsinks = 64\nstride = 32\nimpl = "blocked"\n\n[check]\nmax_kl = 0.1\n')
    with pytest.raises(ValueError, match="unknown DeltaConfig key\\(s\\) 'check'"):
        DeltaConfig.from_toml(path)
    path.write_text('[attention]\nwindow = 256\nsinks = 64\nstride = 32\nimpl = "blocked"\n')
    assert DeltaConfig.from_toml(path, table="attention") == DeltaConfig(window=256, sinks=64, stride=32, impl="blocked")


def test_from_toml_errors(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        DeltaConfig.from_toml(tmp_path / "missing.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("window = = 3")
    with pytest.raises(ValueError, match="is not valid TOML"):
        DeltaConfig.from_toml(bad)
    bad.write_text("window = 3")
    with pytest.raises(ValueError, match=r"has no \[attention\] table"):
        DeltaConfig.from_toml(bad, table="attention")


def test_correction_field_and_layer_plans():
    from delta_opt import Correction, LayerPlan

    config = DeltaConfig(
        correction="taylor",
        layer_plans={"3": {"corrections": ["none", "taylor"], "stride": 32}, 0: LayerPlan(window=64)},
    )
    assert config.correction is Correction.TAYLOR
    assert config.plan_for(3) == LayerPlan(corrections=(Correction.NONE, Correction.TAYLOR), stride=32)
    assert config.plan_for(7) is None
    # Round trips through plain data (JSON/TOML keys are strings).
    data = config.to_dict()
    assert data["layer_plans"] == {"0": {"corrections": [], "window": 64}, "3": {"corrections": ["none", "taylor"], "stride": 32}}
    assert DeltaConfig.from_dict(data) == config
    hash(config)  # still hashable


def test_op_kwargs_follow_the_layer_plan():
    config = DeltaConfig(window=128, stride=16, correction="paper", layer_plans={2: {"corrections": ["none", "taylor"], "window": 64, "stride": 256}})
    assert config.op_kwargs(0, 2)["correction"] == "paper"
    layer2 = config.op_kwargs(2, 2)
    assert (layer2["window"], layer2["stride"], layer2["tail"], layer2["correction"]) == (64, 256, 256, "none,taylor")
    # A plan for another head count is not applied per head (a plan made for another model).
    assert config.op_kwargs(2, 4)["correction"] == "paper"


@pytest.mark.parametrize(
    ("plans", "message"),
    [
        ({"x": {}}, "layer_plans keys must be layer indices"),
        ({-1: {}}, "layer_plans keys must be layer indices"),
        ({1: {"corrections": ["fast"]}}, "correction must be one of"),
        ({1: {"stride": 0}}, "stride must be an integer >= 1 or None"),
        ({1: {"strides": 4}}, "unknown layer plan key"),
        ("taylor", "layer_plans must map layer indices"),
    ],
)
def test_bad_layer_plans(plans, message):
    with pytest.raises(ValueError, match=message):
        DeltaConfig(layer_plans=plans)


def test_layer_plans_from_toml(tmp_path):
    path = tmp_path / "delta-opt.toml"
    path.write_text('window = 128\ncorrection = "taylor"\n\n[layer_plans.4]\ncorrections = ["none", "paper"]\nstride = 8\n')
    config = DeltaConfig.from_toml(path)
    assert config.plan_for(4).corrections == (delta_opt.Correction.NONE, delta_opt.Correction.PAPER)
