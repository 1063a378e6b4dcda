"""Config file + flags -> effective settings; --dump-config; unknown keys and tables."""

from __future__ import annotations

import json
import sys

import pytest

from delta_opt import DeltaConfig
from delta_opt.cli.errors import CliError
from delta_opt.cli.main import main
from delta_opt.cli.settings import CheckSettings, ConfigFile, build, dump, read_config

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib


def _write(tmp_path, text, name="delta-opt.toml"):
    path = tmp_path / name
    path.write_text(text)
    return path


def _dump(capsys, *argv):
    assert main(list(argv)) == 0
    return capsys.readouterr().out


def test_flags_override_file_override_defaults(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    _write(tmp_path, "[attention]\nwindow = 256\nsinks = 8\n[check]\nmax_kl = 0.5\nmin_sqnr_db = false\n")
    data = json.loads(_dump(capsys, "check", "--window", "99", "--max-kl", "0.25", "--dump-config", "json"))
    assert data["attention"]["window"] == 99  # flag over file
    assert data["attention"]["sinks"] == 8  # file over default
    assert data["attention"]["stride"] == DeltaConfig().stride  # default
    assert data["check"]["max_kl"] == 0.25
    assert data["check"]["min_sqnr_db"] is None  # `false` in the file: not checked
    assert data["check"]["min_top1_agreement"] == CheckSettings().min_top1_agreement
    assert set(data) == {"attention", "inputs", "check"}


def test_toml_dump_round_trips(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    config = _write(tmp_path, "[attention]\ntail = 7\ndense_layers = [0, 2]\ndense_modules = ['*.cross']\n", "a.toml")
    text = _dump(capsys, "check", "--config", str(config), "--max-relative-l2", "0.1", "--min-top1-agreement", "off",
                 "--dump-config")  # fmt: skip
    parsed = tomllib.loads(text)  # the dump is valid TOML
    assert parsed["attention"]["tail"] == 7 and parsed["attention"]["dense_layers"] == [0, 2]
    assert parsed["check"]["min_top1_agreement"] is False
    # Feeding the dump back in gives the same effective configuration.
    again = _write(tmp_path, text, "b.toml")
    first = json.loads(_dump(capsys, "check", "--config", str(config), "--max-relative-l2", "0.1",
                             "--min-top1-agreement", "off", "--dump-config", "json"))  # fmt: skip
    second = json.loads(_dump(capsys, "check", "--config", str(again), "--dump-config", "json"))
    assert first == second


def test_layer_plans_round_trip_as_nested_tables(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    text = (
        "[attention]\ncorrection = 'none'\n"
        "[attention.layer_plans.3]\ncorrections = ['paper', 'none']\nwindow = 128\n"
        "[attention.layer_plans.0]\ncorrections = []\nstride = 16\n"
    )
    _write(tmp_path, text)
    dumped = _dump(capsys, "inspect", "--dump-config")
    assert "[attention.layer_plans.3]" in dumped
    parsed = DeltaConfig.from_dict(tomllib.loads(dumped)["attention"])
    assert parsed == DeltaConfig.from_dict(tomllib.loads(text)["attention"])
    assert parsed.plan_for(3).window == 128 and parsed.correction.value == "none"
    data = json.loads(_dump(capsys, "inspect", "--correction", "taylor", "--dump-config", "json"))
    assert data["attention"]["correction"] == "taylor" and data["attention"]["layer_plans"]["0"]["stride"] == 16


def test_unset_values_are_comments_in_toml():
    text = dump({"attention": DeltaConfig(), "check": CheckSettings()})
    assert "# tail: max(128, stride)" in text
    assert "max_relative_l2 = false" in text
    assert tomllib.loads(text)["attention"].get("tail") is None


def test_no_file_means_defaults(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    data = json.loads(_dump(capsys, "inspect", "--dump-config", "json"))
    assert data["attention"] == DeltaConfig().to_dict()
    assert "built-in defaults < flags" in _dump(capsys, "inspect", "--dump-config")


@pytest.mark.parametrize(
    ("text", "phrases"),
    [
        ("[attention]\nwindw = 3\n", ["unknown key(s) 'windw' in [attention]", "valid keys are window, sinks, stride"]),
        ("[check]\nmin_snr = 3\n", ["'min_snr' in [check]", "min_sqnr_db, max_relative_l2, max_kl"]),
        ("[atention]\nwindow = 3\n", ["unknown table [atention]", "[attention], [inputs], [check], [bench]"]),
        ("window = 3\n", ["key 'window' outside a table", "valid tables are"]),
        ("[attention\n", ["is not valid TOML"]),
        ("[attention]\nwindow = 0\n", ["[attention] window must be an integer >= 1; got 0"]),
        ("[check]\nmin_top1_agreement = 2\n", ["[check] min_top1_agreement must be <= 1"]),
        ("[inputs]\nseq_len = 'long'\n", ["[inputs] seq_len must be an integer"]),
    ],
)
def test_bad_config_file(tmp_path, capsys, text, phrases):
    config = _write(tmp_path, text)
    assert main(["check", "--config", str(config), "--dump-config"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("delta-opt check: error:")
    for phrase in phrases:
        assert phrase in err


def test_missing_config_file(tmp_path, capsys):
    assert main(["inspect", "--config", str(tmp_path / "nope.toml"), "--dump-config"]) == 2
    err = capsys.readouterr().err
    assert "config file" in err and "does not exist" in err


def test_bench_dump_fills_the_cpu_benchmark_defaults(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    _write(tmp_path, "[bench]\ndevice = 'cpu'\nn = [128]\n")
    data = json.loads(_dump(capsys, "bench", "--stride", "32", "--dump-config", "json"))["bench"]
    from delta_opt.bench.op_cpu import DEFAULTS

    assert data["device"] == "cpu" and data["n"] == [128] and data["stride"] == 32
    assert data["window"] == DEFAULTS["window"] and data["head_dim"] == DEFAULTS["head_dim"]


def test_build_and_read_directly(tmp_path):
    path = _write(tmp_path, "[check]\nmax_time_ratio = 2\n")
    config = read_config(path)
    settings = build("check", config, {"repeat": 5})
    assert settings.max_time_ratio == 2 and settings.repeat == 5 and settings.timed
    with pytest.raises(CliError, match="repeat must be >= 1"):
        build("check", ConfigFile(None), {"repeat": 0})
