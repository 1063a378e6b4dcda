"""MODEL: what the commands load, and the example inputs that go with it.

Forms (:func:`load_model`):

- ``package.module:factory`` or ``path/to/file.py:factory`` — a callable returning
  ``(model, example_inputs)`` or ``(model, example_inputs, dynamic_shapes)``. ``model`` is an
  ``nn.Module`` (put in eval mode here); ``example_inputs`` is a tuple of positional inputs, a
  dict of keyword inputs or one tensor; ``dynamic_shapes`` is what ``torch.export`` takes. The
  factory may take keyword arguments ``seq_len``, ``batch`` and ``seed``: they are passed when it
  does and they are set (``seed`` always). A ``--seq-len``/``--batch`` flag it cannot take is an
  error; a config-file value it cannot take is ignored, with a note. ``torch.manual_seed(seed)``
  runs before the call, so random init is reproducible either way.
- ``FILE.pt2`` — a program saved with ``torch.export.save``, with its stored example inputs.
- ``hf:DIR`` / ``hf:FILE.gguf`` — a Hugging Face ``transformers`` checkpoint (:mod:`.hf`).
- ``FILE.onnx`` — only for commands that read ONNX files (``inspect``).
- omitted — the embedded default, :func:`delta_opt.zoo.tiny_llama`.
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import logging
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Collection

from .errors import CliError
from .settings import InputSettings

__all__ = ["DEFAULT_FACTORY", "DEFAULT_SEQ_LEN", "LoadedModel", "load_model", "run_model"]

DEFAULT_FACTORY = "delta_opt.zoo:tiny_llama"
DEFAULT_SEQ_LEN = 512
FORMS = "package.module:factory, path/to/file.py:factory, FILE.pt2, hf:DIR, hf:FILE.gguf"


@dataclass
class LoadedModel:
    """A model ready for the commands.

    Attributes:
        spec: MODEL as given (``None``: the embedded default).
        kind: ``factory``, ``default``, ``exported``, ``hf`` or ``onnx``.
        description: one line for summaries and reports.
        model: the ``nn.Module`` or ``ExportedProgram`` (None for ONNX files).
        args / kwargs: example inputs, positional and keyword.
        dynamic_shapes: from the factory, when it returned them.
        path: the file or folder read, when there is one.
        notes: config-file values that did not apply to this model (and were ignored).
    """

    spec: str | None
    kind: str
    description: str
    model: Any = None
    args: tuple[Any, ...] = ()
    kwargs: dict[str, Any] = field(default_factory=dict)
    dynamic_shapes: Any = None
    path: Path | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def example_inputs(self) -> tuple[Any, ...] | dict[str, Any]:
        """The inputs in the form ``delta_opt.optimize`` / ``export_onnx`` take (tuple or dict)."""
        if self.kwargs and self.args:
            raise CliError(
                f"{self.description}: example inputs mix positional and keyword inputs; give one or the other"
            )
        return dict(self.kwargs) if self.kwargs else tuple(self.args)

    def is_exported(self) -> bool:
        import torch

        return isinstance(self.model, torch.export.ExportedProgram)

    def delta_sites(self) -> int:
        """``delta_opt::delta_attention`` calls already in an exported program (0 for modules)."""
        if not self.is_exported():
            return 0
        import torch

        target = torch.ops.delta_opt.delta_attention.default
        return sum(1 for n in self.model.graph.nodes if n.op == "call_function" and n.target is target)

    def sequence_dynamic_shapes(self, max_len: int) -> Any:
        """``dynamic_shapes`` with a dynamic sequence length for ``--dynamic``.

        The factory's own, when it gave them; for keyword token inputs (2-D integer tensors such
        as ``input_ids`` / ``attention_mask``) dim 1 of each; anything else cannot be guessed.
        """
        import torch

        if self.dynamic_shapes is not None:
            return self.dynamic_shapes
        tokens = {
            k
            for k, v in self.kwargs.items()
            if isinstance(v, torch.Tensor) and v.ndim == 2 and not v.is_floating_point()
        }
        if self.args or not tokens:
            raise CliError(
                f"--dynamic: cannot tell which dimension of {self.description}'s inputs is the sequence "
                "(known for keyword token inputs such as input_ids); return dynamic_shapes from the factory "
                "as a third item"
            )
        seq = torch.export.Dim("seq", min=2, max=max_len)
        return {k: ({1: seq} if k in tokens else None) for k in self.kwargs}


def run_model(model: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """Forward of an ``nn.Module`` or an ``ExportedProgram``, without autograd."""
    import torch

    if isinstance(model, torch.export.ExportedProgram):
        model = model.module()
    with torch.no_grad():
        return model(*args, **kwargs)


def load_model(
    spec: str | None,
    settings: InputSettings,
    *,
    inputs_file: str | None = None,
    text_file: str | None = None,
    device: str = "cpu",
    allow_onnx: bool = False,
    command: str = "this command",
    verbose: bool = False,
    explicit: Collection[str] = ("seq_len", "batch"),
) -> LoadedModel:
    """Load MODEL ``spec`` with its example inputs (see the module docstring for the forms).

    ``explicit`` names the input settings the user gave as flags: one that cannot apply to the
    model is an error; one that came from the config file is ignored, with a note.
    """
    skip = _Inapplicable(explicit)
    if spec is not None and not spec.strip():
        raise CliError(f"MODEL is empty; expected one of {FORMS}")
    if text_file is not None and not (spec or "").startswith("hf:"):
        raise CliError("--text applies to hf: models (their tokenizer reads it)")
    if spec is None:
        loaded = _from_factory(DEFAULT_FACTORY, settings, skip, kind="default")
    elif spec.startswith("hf:"):
        from .hf import load_hf

        loaded = load_hf(spec, settings, text_file, verbose=verbose)
    elif spec.endswith(".onnx"):
        path = _existing_file(spec)
        if not allow_onnx:
            raise CliError(f"MODEL {spec!r} is an ONNX file; {command} needs a PyTorch model ({FORMS})")
        return LoadedModel(spec, "onnx", f"ONNX file {spec}", path=path)
    elif spec.endswith(".pt2"):
        loaded = _from_pt2(spec, settings, skip)
    elif ":" in spec and not Path(spec).exists():
        loaded = _from_factory(spec, settings, skip, kind="factory")
    else:
        hint = ""
        if Path(spec).is_dir() and (Path(spec) / "config.json").is_file():
            hint = f" (a Hugging Face checkpoint? write hf:{spec})"
        elif spec.endswith(".gguf"):
            hint = f" (write hf:{spec})"
        raise CliError(
            f"MODEL {spec!r} is not a recognised form{hint}; expected one of {FORMS}, or FILE.onnx for inspect"
        )
    loaded.notes.extend(skip.notes)
    if inputs_file is not None:
        _use_inputs_file(loaded, inputs_file)
    _to_device(loaded, device)
    return loaded


def _existing_file(name: str) -> Path:
    path = Path(name)
    if not path.exists():
        raise CliError(f"MODEL file {name!r} does not exist")
    if not path.is_file():
        raise CliError(f"MODEL {name!r} is not a file")
    return path


# ---- factories -----------------------------------------------------------------------------


def _import_factory(spec: str) -> Callable[..., Any]:
    module_name, _, attr = spec.rpartition(":")
    if not module_name or not attr:
        raise CliError(f"MODEL {spec!r}: a factory is written package.module:function")
    try:
        if module_name.endswith(".py"):
            module = _import_file(spec, Path(module_name))
        else:
            # A console script does not put the working directory on sys.path (`python -m` does);
            # factories in the user's project should import the same way under both.
            if "" not in sys.path and str(Path.cwd()) not in sys.path:
                sys.path.insert(0, str(Path.cwd()))
            module = importlib.import_module(module_name)
    except CliError:
        raise
    except ModuleNotFoundError as e:
        raise CliError(f"MODEL {spec!r}: cannot import {module_name!r} ({e})") from None
    except Exception as e:
        raise CliError(f"MODEL {spec!r}: importing {module_name!r} failed: {type(e).__name__}: {e}") from e
    obj: Any = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise CliError(f"MODEL {spec!r}: {module_name!r} has no attribute {attr!r}")
        obj = getattr(obj, part)
    if not callable(obj):
        raise CliError(f"MODEL {spec!r}: {attr!r} is not callable (a factory returns (model, example_inputs))")
    return obj


def _import_file(spec: str, path: Path) -> Any:
    if not path.is_file():
        raise CliError(f"MODEL {spec!r}: file {str(path)!r} does not exist")
    name = f"_delta_opt_model_{path.stem}"
    module_spec = importlib.util.spec_from_file_location(name, path)
    if module_spec is None or module_spec.loader is None:
        raise CliError(f"MODEL {spec!r}: {str(path)!r} cannot be imported as a Python file")
    module = importlib.util.module_from_spec(module_spec)
    sys.modules[name] = module  # dataclasses and pickling look modules up by name
    module_spec.loader.exec_module(module)
    return module


class _Inapplicable:
    """Input settings that cannot apply to a model: an error for flags, a note for config values."""

    def __init__(self, explicit: Collection[str]) -> None:
        self.explicit = set(explicit)
        self.notes: list[str] = []

    def __call__(self, name: str, reason: str) -> None:
        if name in self.explicit:
            raise CliError(f"--{name.replace('_', '-')} cannot apply: {reason}")
        self.notes.append(f"[inputs] {name} from the config file does not apply ({reason}); ignored")


def _factory_kwargs(
    factory: Callable[..., Any], spec: str, settings: InputSettings, skip: _Inapplicable
) -> dict[str, Any]:
    try:
        params = inspect.signature(factory).parameters
    except (TypeError, ValueError):
        params = {}
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    kwargs: dict[str, Any] = {}
    for name in ("seq_len", "batch", "seed"):
        value = getattr(settings, name)
        if value is None:
            continue
        if name in params or takes_any:
            kwargs[name] = value
        elif name != "seed":  # the seed also seeds torch before the call; taking it is optional
            skip(name, f"the factory {spec} takes no {name!r} argument")
    return kwargs


def _from_factory(spec: str, settings: InputSettings, skip: _Inapplicable, *, kind: str) -> LoadedModel:
    import torch

    factory = _import_factory(spec)
    kwargs = _factory_kwargs(factory, spec, settings, skip)
    torch.manual_seed(settings.seed)
    try:
        result = factory(**kwargs)
    except ValueError as e:
        raise CliError(f"MODEL {spec!r}: {e}") from None
    except ImportError as e:
        raise CliError(f"MODEL {spec!r}: the factory needs a package that is not installed ({e})") from None
    if not isinstance(result, tuple) or len(result) not in (2, 3):
        raise CliError(
            f"MODEL {spec!r}: a factory must return (model, example_inputs) or (model, example_inputs, "
            f"dynamic_shapes); got {type(result).__name__}"
        )
    model, inputs = result[0], result[1]
    if not isinstance(model, torch.nn.Module):
        raise CliError(f"MODEL {spec!r}: the factory's model must be a torch.nn.Module; got {type(model).__name__}")
    model.eval()
    args, kw = _split_inputs(inputs, f"MODEL {spec!r}: the factory's example_inputs")
    if args and kw:
        raise CliError(f"MODEL {spec!r}: example_inputs must be a tuple or a dict, not both")
    description = f"{type(model).__name__} from {spec}"
    if kind == "default":
        description = f"embedded default {spec} ({type(model).__name__}, random init)"
    dynamic = result[2] if len(result) == 3 else None
    return LoadedModel(spec if kind == "factory" else None, kind, description, model, args, kw, dynamic)


def _split_inputs(inputs: Any, what: str) -> tuple[tuple[Any, ...], dict[str, Any]]:
    import torch

    if isinstance(inputs, torch.Tensor):
        return (inputs,), {}
    if isinstance(inputs, dict):
        if not all(isinstance(k, str) for k in inputs):
            raise CliError(f"{what}: a dict of keyword inputs needs string keys")
        return (), dict(inputs)
    if isinstance(inputs, (tuple, list)):
        return tuple(inputs), {}
    raise CliError(
        f"{what} must be a tensor, a tuple/list of inputs or a dict of keyword inputs; got {type(inputs).__name__}"
    )


# ---- saved programs ------------------------------------------------------------------------


def _from_pt2(spec: str, settings: InputSettings, skip: _Inapplicable) -> LoadedModel:
    path = _existing_file(spec)
    for name in ("seq_len", "batch"):
        if getattr(settings, name) is not None:
            skip(
                name,
                f"{spec} is a saved program with the example inputs it was exported with; pass --inputs FILE for others",
            )
    program = _load_program(spec, path)
    args, kwargs = (), {}
    if program.example_inputs is not None:
        args, kwargs = tuple(program.example_inputs[0]), dict(program.example_inputs[1])
    return LoadedModel(spec, "exported", f"ExportedProgram {spec}", program, args, kwargs, path=path)


class _Records(logging.Filter):
    """Keeps the records a logger emits, and stops them from reaching its handlers."""

    def __init__(self) -> None:
        super().__init__()
        self.text: list[str] = []

    def filter(self, record: logging.LogRecord) -> bool:
        self.text.append(logging.Formatter().format(record))
        return False


def _load_program(spec: str, path: Path) -> Any:
    """``torch.export.load``, importing the modules that define the program's output types.

    A program whose outputs are a registered pytree class (a transformers ``ModelOutput``, a
    user's dataclass) loads only once that class is registered, i.e. its module imported.
    ``torch.export.load`` logs which class it missed and raises a generic error; this reads the
    log, imports the class's module and tries again.
    """
    import torch

    logger = logging.getLogger("torch.export")
    imported: set[str] = set()
    while True:
        records = _Records()
        logger.addFilter(records)  # the log is read here, not printed
        try:
            return torch.export.load(path)
        except Exception as e:
            error = e
        finally:
            logger.removeFilter(records)
        log = "\n".join(records.text)
        missing = re.findall(r"Deserializing ([\w.]+) in pytree is not registered", log)
        module = missing[0].rpartition(".")[0] if missing else ""
        if not module or module in imported:
            lines = [line for line in log.splitlines() if line.strip() and not line.startswith((" ", "Traceback"))]
            detail = lines[-1] if lines else f"{type(error).__name__}: {error}"
            raise CliError(f"MODEL {spec!r} could not be loaded with torch.export.load: {detail}")
        try:
            importlib.import_module(module)
        except ImportError as e:
            raise CliError(
                f"MODEL {spec!r}: its outputs are {missing[0]}, whose module cannot be imported ({e})"
            ) from None
        imported.add(module)


# ---- given inputs, device ------------------------------------------------------------------


def _use_inputs_file(loaded: LoadedModel, name: str) -> None:
    import torch

    path = Path(name)
    if not path.is_file():
        raise CliError(f"--inputs {name!r} does not exist")
    try:
        data = torch.load(path, weights_only=True)
    except Exception as e:
        raise CliError(
            f"--inputs {name!r} could not be read with torch.load(weights_only=True): {type(e).__name__}: {e}"
        ) from None
    args, kwargs = _split_inputs(data, f"--inputs {name!r}")
    if loaded.kind == "hf":
        # A bare tensor of token ids is the usual thing to save for a language model.
        if args and not kwargs and len(args) == 1:
            args, kwargs = (), {"input_ids": args[0]}
        if "use_cache" in loaded.kwargs:
            kwargs.setdefault("use_cache", False)
    loaded.args, loaded.kwargs = args, kwargs


def _to_device(loaded: LoadedModel, device: str) -> None:
    import torch

    try:
        target = torch.device(device)
    except (RuntimeError, TypeError) as e:
        raise CliError(f"--device {device!r} is not a device ({e})") from None
    if target.type == "cuda" and not torch.cuda.is_available():
        raise CliError(f"--device {device!r}: no CUDA device is available")
    if target.type == "cpu":
        return  # everything is built on the CPU
    if loaded.is_exported():
        raise CliError("--device applies to PyTorch modules; a saved program runs on the device it was exported on")
    loaded.model.to(target)
    move = lambda x: x.to(target) if isinstance(x, torch.Tensor) else x  # noqa: E731
    loaded.args = tuple(move(a) for a in loaded.args)
    loaded.kwargs = {k: move(v) for k, v in loaded.kwargs.items()}
