"""`DeltaConfig`: the parameters of a Delta Attention conversion, validated once.

A config is a frozen dataclass so that it can be hashed, shared between layers and written into
reports without anyone mutating it half-way through a conversion. Every field is checked in
``__post_init__`` and a bad value raises ``ValueError`` naming the field and its allowed range.
"""

from __future__ import annotations

import dataclasses
import enum
import fnmatch
import sys
from pathlib import Path
from typing import Any, Mapping

from .plan import Correction, LayerPlan, format_corrections

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on Python 3.10 only
    import tomli as tomllib

__all__ = ["Correction", "DeltaConfig", "Impl", "LayerPlan", "default_tail"]


class Impl(str, enum.Enum):
    """Which implementation of ``delta_opt::delta_attention`` runs in eager mode.

    ``AUTO`` picks the fastest one available for the inputs' device: ``TRITON`` on CUDA when
    Triton is importable, ``BLOCKED`` otherwise.
    """

    AUTO = "auto"
    REFERENCE = "reference"
    BLOCKED = "blocked"
    TRITON = "triton"

    @classmethod
    def parse(cls, value: "Impl | str", *, name: str = "impl") -> "Impl":
        """Return ``value`` as an ``Impl``; an unknown string raises ``ValueError`` listing the valid ones."""
        if isinstance(value, cls):
            return value
        if isinstance(value, str):
            try:
                return cls(value.lower())
            except ValueError:
                pass
        valid = ", ".join(repr(m.value) for m in cls)
        raise ValueError(f"{name} must be one of {valid}; got {value!r}")


def default_tail(stride: int) -> int:
    """The paper's dense tail length for a stride: ``max(128, stride)``."""
    return max(128, stride)


def _int_tuple(name: str, value: Any) -> tuple[int, ...]:
    if isinstance(value, (str, bytes)) or not isinstance(value, (tuple, list)):
        raise ValueError(f"{name} must be a list of layer indices (integers >= 0); got {value!r}")
    for item in value:
        if isinstance(item, bool) or not isinstance(item, int) or item < 0:
            raise ValueError(f"{name} must be a list of layer indices (integers >= 0); got item {item!r}")
    return tuple(value)


def _glob_tuple(name: str, value: Any) -> tuple[str, ...]:
    if isinstance(value, (str, bytes)) or not isinstance(value, (tuple, list)):
        raise ValueError(f"{name} must be a list of module-path globs (non-empty strings); got {value!r}")
    for item in value:
        if not isinstance(item, str) or not item.strip():
            raise ValueError(f"{name} must be a list of module-path globs (non-empty strings); got item {item!r}")
    return tuple(value)


def _layer_plans(value: Any) -> tuple[tuple[int, LayerPlan], ...]:
    """``{layer: LayerPlan | dict}`` (keys may be strings, as in TOML/JSON) as sorted pairs."""
    items = value.items() if isinstance(value, Mapping) else value
    if isinstance(items, (str, bytes)) or not hasattr(items, "__iter__"):
        raise ValueError(f"layer_plans must map layer indices to plans; got {value!r}")
    plans: dict[int, LayerPlan] = {}
    for item in items:
        if not isinstance(item, (tuple, list)) or len(item) != 2:
            raise ValueError(f"layer_plans must map layer indices to plans; got item {item!r}")
        key, plan = item
        try:
            index = int(key)
        except (TypeError, ValueError):
            raise ValueError(f"layer_plans keys must be layer indices (integers >= 0); got {key!r}") from None
        if index < 0 or isinstance(key, bool):
            raise ValueError(f"layer_plans keys must be layer indices (integers >= 0); got {key!r}")
        plans[index] = plan if isinstance(plan, LayerPlan) else LayerPlan.from_dict(plan)
    return tuple(sorted(plans.items()))


def _check_int(name: str, value: Any, minimum: int) -> None:
    # bool is an int subclass; `window=True` is a bug, not a window of 1.
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{name} must be an integer >= {minimum}; got {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}; got {value}")


@dataclasses.dataclass(frozen=True)
class DeltaConfig:
    """Parameters of Delta Attention (DESIGN §1) and of how a conversion applies it.

    Attributes:
        window: sliding-window size W >= 1; key j is in the window of query i when |i - j| < W.
        sinks: number S >= 0 of leading keys every query may attend to.
        stride: anchor stride G >= 1; every G-th query row is computed densely and its
            dense-minus-sparse difference corrects the G - 1 rows after it.
        tail: number T >= 0 of final rows computed densely; ``None`` means the paper's
            ``max(128, stride)`` (see :attr:`resolved_tail`).
        min_seq_len: attention over sequences shorter than this stays dense (nothing to save
            there). The conversion decides per site from the traced length: a static length
            ``N < min_seq_len`` keeps the site dense; a dynamic length is kept dense only when its
            whole range (``torch.export`` bounds) lies below ``min_seq_len``, and converted
            otherwise, so that at run time shorter inputs also take the delta op (which equals
            dense attention whenever ``N <= window`` or ``N <= tail``).
        dense_layers: layer indices whose attention stays dense. A site's layer index is the
            first integer component of its module path (``model.layers.3.self_attn`` -> 3).
        dense_modules: ``fnmatch`` globs over module paths whose attention stays dense, e.g.
            ``"model.layers.0.*"`` or ``"*.cross_attn"``.
        correction: the rule that corrects rows ``[0, Np)`` (:class:`Correction`): ``paper`` (the
            default, DESIGN §1), ``none`` (sparse rows stay sparse) or ``taylor`` (see
            :mod:`delta_opt.plan`).
        retrieve: K >= 0 long-range keys each anchor picks for the rows it corrects (0: none).
        layer_plans: per-layer overrides ``{layer index: LayerPlan}`` — per-head rules and
            optionally W and G — usually chosen by :func:`delta_opt.calibrate`.
        impl: which eager implementation runs the op (:class:`Impl`; strings are accepted).
    """

    window: int = 2048
    sinks: int = 1024
    stride: int = 64
    tail: int | None = None
    min_seq_len: int = 0
    dense_layers: tuple[int, ...] = ()
    dense_modules: tuple[str, ...] = ()
    correction: Correction = Correction.PAPER
    retrieve: int = 0
    layer_plans: tuple[tuple[int, LayerPlan], ...] = ()
    impl: Impl = Impl.AUTO

    def __post_init__(self) -> None:
        _check_int("window", self.window, 1)
        _check_int("sinks", self.sinks, 0)
        _check_int("stride", self.stride, 1)
        if self.tail is not None:
            _check_int("tail", self.tail, 0)
        _check_int("min_seq_len", self.min_seq_len, 0)
        # Lists (from JSON/TOML) become tuples so that the config stays hashable and comparable.
        object.__setattr__(self, "dense_layers", _int_tuple("dense_layers", self.dense_layers))
        object.__setattr__(self, "dense_modules", _glob_tuple("dense_modules", self.dense_modules))
        # Frozen dataclass: coerce a string selector to the enum through object.__setattr__.
        object.__setattr__(self, "impl", Impl.parse(self.impl))
        object.__setattr__(self, "correction", Correction.parse(self.correction))
        _check_int("retrieve", self.retrieve, 0)
        object.__setattr__(self, "layer_plans", _layer_plans(self.layer_plans))

    @property
    def resolved_tail(self) -> int:
        """The dense tail length actually used: ``tail``, or ``max(128, stride)`` when unset."""
        return default_tail(self.stride) if self.tail is None else self.tail

    def dense_reason(self, module: str, layer: int | None) -> str | None:
        """Why the layer filter keeps the attention of ``module`` (layer index ``layer``) dense, or None."""
        if layer is not None and layer in self.dense_layers:
            return f"kept dense by config: dense_layers contains {layer}"
        for pattern in self.dense_modules:
            if fnmatch.fnmatchcase(module, pattern):
                return f"kept dense by config: dense_modules pattern {pattern!r} matches {module!r}"
        return None

    def plan_for(self, layer: int | None) -> LayerPlan | None:
        """The calibrated plan of layer ``layer``, if any."""
        for index, plan in self.layer_plans:
            if index == layer:
                return plan
        return None

    def op_kwargs(self, layer: int | None = None, heads: int | None = None) -> dict[str, Any]:
        """Keyword arguments of ``delta_opt::delta_attention`` for a site of layer ``layer``.

        A layer plan's per-head rules apply only when ``heads`` (the site's query heads) matches
        their count; otherwise the config's rule is used (a plan made for another model).
        """
        plan = self.plan_for(layer)
        window = plan.window if plan is not None and plan.window is not None else self.window
        stride = plan.stride if plan is not None and plan.stride is not None else self.stride
        correction = self.correction.value
        if plan is not None and plan.corrections and heads == len(plan.corrections):
            correction = format_corrections(plan.corrections)
        return {
            "window": window,
            "sinks": self.sinks,
            "stride": stride,
            "tail": default_tail(stride) if self.tail is None else self.tail,
            "correction": correction,
            "retrieve": plan.retrieve if plan is not None and plan.retrieve is not None else self.retrieve,
            "impl": self.impl.value,
        }

    def replace(self, **changes: Any) -> "DeltaConfig":
        """A copy with ``changes`` applied (validated like a new config)."""
        return dataclasses.replace(self, **changes)

    # ---- serialisation -------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON/TOML-serialisable values; ``from_dict(to_dict(c)) == c``."""
        out: dict[str, Any] = {}
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if field.name == "layer_plans":
                value = {str(index): plan.to_dict() for index, plan in value}
            elif isinstance(value, enum.Enum):
                value = value.value
            elif isinstance(value, tuple):
                value = list(value)
            out[field.name] = value
        return out

    @classmethod
    def field_names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in dataclasses.fields(cls))

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "DeltaConfig":
        """Build a config from a mapping; an unknown key raises ``ValueError`` listing the valid ones."""
        if not isinstance(data, Mapping):
            raise ValueError(f"DeltaConfig.from_dict expects a mapping; got {type(data).__name__}")
        valid = cls.field_names()
        unknown = sorted(set(data) - set(valid))
        if unknown:
            raise ValueError(
                f"unknown DeltaConfig key(s) {', '.join(map(repr, unknown))}; valid keys are {', '.join(valid)}"
            )
        return cls(**dict(data))

    @classmethod
    def from_toml(cls, path: str | Path, *, table: str | None = None) -> "DeltaConfig":
        """Load a config from a TOML file: its top-level keys, or those of ``[table]`` when given.

        Example file::

            window = 256
            sinks = 64
            stride = 32
        """
        path = Path(path)
        if not path.is_file():
            raise ValueError(f"config file {str(path)!r} does not exist")
        with path.open("rb") as f:
            try:
                data = tomllib.load(f)
            except tomllib.TOMLDecodeError as e:
                raise ValueError(f"config file {str(path)!r} is not valid TOML: {e}") from None
        if table is not None:
            if table not in data or not isinstance(data[table], dict):
                raise ValueError(f"config file {str(path)!r} has no [{table}] table")
            data = data[table]
        return cls.from_dict(data)
