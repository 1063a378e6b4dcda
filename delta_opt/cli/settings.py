"""The effective configuration of a command: built-in defaults < ``delta-opt.toml`` < flags.

The config file has one table per concern; every key is optional::

    [attention]          # DeltaConfig: window, sinks, stride, tail, min_seq_len, dense_layers,
    window = 256         #   dense_modules, correction, retrieve, impl; per-layer plans: [attention.layer_plans.<layer>]
    [inputs]             # generated inputs: seq_len, batch, seed
    seq_len = 1024
    [check]              # `delta-opt check` thresholds (false = not checked)
    min_sqnr_db = 20.0
    [bench]              # `delta-opt bench`: sizes and attention parameters of the benchmark
    n = [2048, 8192]

An unknown table or key is an error that lists the valid ones. A flag's destination is
``"<table>.<key>"`` (``--window`` sets ``attention.window``), and flags left out are absent from
the parsed namespace, so only the flags a user typed override the file.
"""

from __future__ import annotations

import dataclasses
import json
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from ..config import DeltaConfig
from .errors import CliError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

__all__ = [
    "CONFIG_FILE",
    "BenchSettings",
    "CheckSettings",
    "ConfigFile",
    "InputSettings",
    "TABLES",
    "build",
    "dump",
    "overrides",
    "read_config",
    "table_dict",
]

CONFIG_FILE = "delta-opt.toml"


def _number(
    name: str, value: Any, *, minimum: float | None = None, maximum: float | None = None, integer: bool = False
) -> None:
    kind = "an integer" if integer else "a number"
    ok_type = isinstance(value, int) if integer else isinstance(value, (int, float))
    if isinstance(value, bool) or not ok_type or (isinstance(value, float) and math.isnan(value)):
        raise ValueError(f"{name} must be {kind}; got {value!r}")
    if minimum is not None and value < minimum:
        raise ValueError(f"{name} must be >= {minimum}; got {value!r}")
    if maximum is not None and value > maximum:
        raise ValueError(f"{name} must be <= {maximum}; got {value!r}")


def _flag(help: str, *, off: bool = False, unset: str | None = None) -> dict[str, Any]:
    """Field metadata: ``off`` marks a threshold that ``false``/``off`` disables (stored as None);
    ``unset`` explains what None means for other optional fields."""
    return {"help": help, "off": off, "unset": unset}


@dataclass(frozen=True)
class InputSettings:
    """How example inputs are made when the model does not bring its own (``[inputs]``)."""

    seq_len: int | None = field(
        default=None,
        metadata=_flag(
            "tokens per generated sequence", unset="the model's own example inputs, or 512 generated tokens"
        ),
    )
    batch: int | None = field(
        default=None, metadata=_flag("sequences per generated batch", unset="the model's own example inputs, or 1")
    )
    seed: int = field(default=0, metadata=_flag("seed of generated inputs and of factories' random init"))

    def __post_init__(self) -> None:
        for name in ("seq_len", "batch"):
            if getattr(self, name) is not None:
                _number(name, getattr(self, name), minimum=1, integer=True)
        _number("seed", self.seed, minimum=0, integer=True)


@dataclass(frozen=True)
class CheckSettings:
    """Thresholds of ``delta-opt check`` (``[check]``); a threshold set to None is not checked."""

    min_sqnr_db: float | None = field(
        default=20.0, metadata=_flag("every floating output: SQNR of converted vs dense, in dB, at least", off=True)
    )
    max_relative_l2: float | None = field(
        default=None, metadata=_flag("every floating output: ||converted - dense|| / ||dense||, at most", off=True)
    )
    max_kl: float | None = field(
        default=0.1, metadata=_flag("LM logits: mean KL(dense || converted) over positions, in nats, at most", off=True)
    )
    min_top1_agreement: float | None = field(
        default=0.8, metadata=_flag("LM logits: fraction of positions whose argmax agrees, at least", off=True)
    )
    min_converted: int = field(default=1, metadata=_flag("attention sites converted, at least"))
    max_time_ratio: float | None = field(
        default=None, metadata=_flag("converted / dense forward time, at most (turns timing on)", off=True)
    )
    timing: bool = field(default=False, metadata=_flag("time the dense and converted forward passes"))
    repeat: int = field(default=3, metadata=_flag("timed calls per model when timing"))

    def __post_init__(self) -> None:
        if self.min_sqnr_db is not None:
            _number("min_sqnr_db", self.min_sqnr_db)
        for name in ("max_relative_l2", "max_kl"):
            if getattr(self, name) is not None:
                _number(name, getattr(self, name), minimum=0)
        if self.min_top1_agreement is not None:
            _number("min_top1_agreement", self.min_top1_agreement, minimum=0, maximum=1)
        if self.max_time_ratio is not None:
            _number("max_time_ratio", self.max_time_ratio, minimum=0)
        _number("min_converted", self.min_converted, minimum=0, integer=True)
        _number("repeat", self.repeat, minimum=1, integer=True)
        if not isinstance(self.timing, bool):
            raise ValueError(f"timing must be true or false; got {self.timing!r}")

    @property
    def timed(self) -> bool:
        return self.timing or self.max_time_ratio is not None


@dataclass(frozen=True)
class BenchSettings:
    """``delta-opt bench`` (``[bench]``); unset sizes take the chosen benchmark's defaults."""

    device: str = field(default="auto", metadata=_flag("auto (CUDA when available), cpu or cuda"))
    n: tuple[int, ...] | None = field(default=None, metadata=_flag("sequence lengths", unset="the benchmark's default"))
    batch: int | None = field(default=None, metadata=_flag("batch size B", unset="the benchmark's default"))
    q_heads: int | None = field(default=None, metadata=_flag("query heads Hq", unset="the benchmark's default"))
    kv_heads: int | None = field(default=None, metadata=_flag("key/value heads Hkv", unset="the benchmark's default"))
    head_dim: int | None = field(default=None, metadata=_flag("head dim D", unset="the benchmark's default"))
    window: int | None = field(default=None, metadata=_flag("window W", unset="the benchmark's default"))
    sinks: int | None = field(default=None, metadata=_flag("sinks S", unset="the benchmark's default"))
    stride: int | None = field(default=None, metadata=_flag("stride G", unset="the benchmark's default"))
    repeat: int = field(default=3, metadata=_flag("timed calls per method and size"))
    memory: bool = field(default=True, metadata=_flag("CPU: measure peak memory in a child process per call"))
    time_budget_s: float | None = field(
        default=None, metadata=_flag("GPU: wall-clock budget of the run, in seconds", unset="the benchmark's default")
    )

    def __post_init__(self) -> None:
        if self.device not in ("auto", "cpu", "cuda"):
            raise ValueError(f"device must be one of 'auto', 'cpu', 'cuda'; got {self.device!r}")
        if self.n is not None:
            if isinstance(self.n, (str, bytes)) or not isinstance(self.n, (list, tuple)) or not self.n:
                raise ValueError(f"n must be a non-empty list of sequence lengths; got {self.n!r}")
            for item in self.n:
                _number("n", item, minimum=1, integer=True)
            object.__setattr__(self, "n", tuple(self.n))
        for name in ("batch", "q_heads", "kv_heads", "head_dim", "window", "stride", "repeat"):
            if getattr(self, name) is not None:
                _number(name, getattr(self, name), minimum=1, integer=True)
        if self.sinks is not None:
            _number("sinks", self.sinks, minimum=0, integer=True)
        if not isinstance(self.memory, bool):
            raise ValueError(f"memory must be true or false; got {self.memory!r}")
        if self.time_budget_s is not None:
            _number("time_budget_s", self.time_budget_s, minimum=1)


TABLES: dict[str, type] = {
    "attention": DeltaConfig,
    "inputs": InputSettings,
    "check": CheckSettings,
    "bench": BenchSettings,
}


def _keys(table: str) -> tuple[str, ...]:
    return tuple(f.name for f in dataclasses.fields(TABLES[table]))


def _off_keys(table: str) -> set[str]:
    return {f.name for f in dataclasses.fields(TABLES[table]) if f.metadata.get("off")}


@dataclass
class ConfigFile:
    """The tables read from a config file (empty when there is none)."""

    path: Path | None
    tables: dict[str, dict[str, Any]] = field(default_factory=dict)

    def table(self, name: str) -> dict[str, Any]:
        return dict(self.tables.get(name, {}))


def read_config(path: str | Path | None, *, cwd: Path | None = None) -> ConfigFile:
    """Read ``path``, or ``delta-opt.toml`` in ``cwd`` when ``path`` is None (no file: no tables).

    Raises :class:`CliError` for a missing or invalid file, an unknown table or an unknown key.
    """
    if path is None:
        candidate = (cwd or Path.cwd()) / CONFIG_FILE
        if not candidate.is_file():
            return ConfigFile(None)
        path = candidate if cwd is not None else Path(CONFIG_FILE)
    path = Path(path)
    if not path.is_file():
        raise CliError(f"config file {str(path)!r} does not exist")
    try:
        with path.open("rb") as f:
            data = tomllib.load(f)
    except tomllib.TOMLDecodeError as e:
        raise CliError(f"config file {str(path)!r} is not valid TOML: {e}") from None
    valid_tables = ", ".join(f"[{t}]" for t in TABLES)
    for name, values in data.items():
        if name not in TABLES:
            what = f"unknown table [{name}]" if isinstance(values, dict) else f"key {name!r} outside a table"
            raise CliError(f"config file {str(path)!r}: {what}; valid tables are {valid_tables}")
        if not isinstance(values, dict):
            raise CliError(f"config file {str(path)!r}: {name!r} must be a table ([{name}])")
        unknown = sorted(set(values) - set(_keys(name)))
        if unknown:
            raise CliError(
                f"config file {str(path)!r}: unknown key(s) {', '.join(map(repr, unknown))} in [{name}]; "
                f"valid keys are {', '.join(_keys(name))}"
            )
    return ConfigFile(path, {name: dict(values) for name, values in data.items()})


def overrides(namespace: Any, table: str) -> dict[str, Any]:
    """The flags given for ``table`` (destinations ``"<table>.<key>"``), without the prefix."""
    prefix = table + "."
    return {dest[len(prefix) :]: value for dest, value in vars(namespace).items() if dest.startswith(prefix)}


def build(table: str, config: ConfigFile, flags: Mapping[str, Any]) -> Any:
    """The settings object of ``table``: its defaults, then the file's values, then ``flags``."""
    values = {**config.table(table), **flags}
    for key in _off_keys(table):
        if values.get(key) is False:  # `min_sqnr_db = false` in TOML: not checked
            values[key] = None
    where = f" (config file {str(config.path)!r} or flags)" if config.path else ""
    try:
        if TABLES[table] is DeltaConfig:
            return DeltaConfig.from_dict(values)
        return TABLES[table](**values)
    except (TypeError, ValueError) as e:
        raise CliError(f"[{table}] {e}{where}") from None


def table_dict(settings: Any) -> dict[str, Any]:
    """Plain values of a settings object (enums as their values, tuples as lists)."""
    if isinstance(settings, DeltaConfig):
        return settings.to_dict()
    out = {}
    for f in dataclasses.fields(settings):
        value = getattr(settings, f.name)
        out[f.name] = list(value) if isinstance(value, tuple) else value
    return out


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)  # a JSON string is a valid TOML basic string
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise TypeError(f"cannot write {type(value).__name__} to TOML")


def _unset_note(table: str, key: str) -> str:
    if table == "attention" and key == "tail":
        return "max(128, stride)"
    for f in dataclasses.fields(TABLES[table]):
        if f.name == key:
            return f.metadata.get("unset") or "unset"
    return "unset"


def _toml_table(header: str, values: Mapping[str, Any], off: set[str], unset: Any) -> list[str]:
    """``[header]`` with its plain keys, then its sub-tables as ``[header.key]`` (TOML's order)."""
    lines = [f"\n[{header}]"]
    tables = []
    for key, value in values.items():
        if isinstance(value, Mapping):
            if value:
                tables.append((key, value))
            else:
                lines.append(f"{key} = {{}}")
        elif value is None and key in off:
            lines.append(f"{key} = false  # not checked")
        elif value is None:
            lines.append(f"# {key}: {unset(key)}")
        else:
            lines.append(f"{key} = {_toml_value(value)}")
    for key, value in tables:
        lines += _toml_table(f"{header}.{key}", value, set(), lambda k: "unset")
    return lines


def dump(tables: Mapping[str, Any], fmt: str = "toml", *, source: str = "") -> str:
    """The settings objects in ``tables`` as TOML (``false`` = threshold off, unset keys as
    comments) or JSON (``null`` for both)."""
    plain = {name: table_dict(settings) for name, settings in tables.items()}
    if fmt == "json":
        return json.dumps(plain, indent=2)
    if fmt != "toml":
        raise ValueError(f"fmt must be 'toml' or 'json'; got {fmt!r}")
    lines = [f"# effective configuration: {source}"] if source else []
    for name, values in plain.items():
        lines += _toml_table(name, values, _off_keys(name), lambda key, name=name: _unset_note(name, key))
    return "\n".join(lines).lstrip("\n") + "\n"
