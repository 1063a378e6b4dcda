"""``hf:DIR`` / ``hf:FILE.gguf``: Hugging Face checkpoints as MODEL.

The causal LM if the architecture has one, else the base model, in float32 and eval mode, with
generated token ids (``--seq-len``, default 512; ``--batch``; ``--seed``) or the first tokens of
a ``--text`` file, and ``use_cache=False`` (``torch.export`` cannot return the cache object).
"""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any

from .errors import CliError, require
from .models import DEFAULT_SEQ_LEN, LoadedModel
from .settings import InputSettings

__all__ = ["HF_INSTALL", "load_hf"]

HF_INSTALL = "pip install 'delta-opt[hf]'"


# ---- Hugging Face --------------------------------------------------------------------------


def load_hf(spec: str, settings: InputSettings, text_file: str | None, *, verbose: bool) -> LoadedModel:
    import torch

    name = spec[3:]
    path = Path(name)
    if not name or not path.exists():
        raise CliError(f"MODEL {spec!r}: {name!r} does not exist (hf: takes a checkpoint folder or a .gguf file)")
    require("transformers", needed_for=f"MODEL {spec!r}", install=HF_INSTALL)
    load_kwargs: dict[str, Any] = {}
    folder = path
    if path.is_file():
        if path.suffix != ".gguf":
            raise CliError(f"MODEL {spec!r}: hf: takes a checkpoint folder or a .gguf file; got the file {name!r}")
        require("gguf", needed_for=f"MODEL {spec!r} (a GGUF file)", install=HF_INSTALL)
        folder, load_kwargs = path.parent, {"gguf_file": path.name}
    elif not (path / "config.json").is_file():
        raise CliError(f"MODEL {spec!r}: {name!r} has no config.json (not a Hugging Face checkpoint folder)")
    import transformers

    if not verbose:  # weight-loading progress bars and notes are noise in a CLI run
        transformers.logging.set_verbosity_error()
        transformers.logging.disable_progress_bar()
    try:
        try:
            model = transformers.AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32, **load_kwargs)
        except ValueError as e:
            if "Unrecognized configuration class" not in str(e):
                raise
            model = transformers.AutoModel.from_pretrained(folder, dtype=torch.float32, **load_kwargs)
    except (OSError, ValueError) as e:
        raise CliError(f"MODEL {spec!r} could not be loaded with transformers: {str(e).splitlines()[0]}") from None
    model.eval()
    kwargs = _hf_inputs(model, spec, settings, folder, load_kwargs, text_file)
    description = f"{type(model).__name__} from {spec}"
    return LoadedModel(spec, "hf", description, model, (), kwargs, path=path)


def _hf_inputs(
    model: Any, spec: str, settings: InputSettings, folder: Path, load_kwargs: dict[str, Any], text_file: str | None
) -> dict[str, Any]:
    import torch

    config = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    if text_file is not None:
        text_path = Path(text_file)
        if not text_path.is_file():
            raise CliError(f"--text {text_file!r} does not exist")
        if settings.batch not in (None, 1):
            raise CliError("--text makes one sequence; --batch must be 1 (or left out) with it")
        from transformers import AutoTokenizer

        try:
            tokenizer = AutoTokenizer.from_pretrained(folder, **load_kwargs)
        except (OSError, ValueError) as e:
            raise CliError(f"MODEL {spec!r} has no usable tokenizer for --text: {str(e).splitlines()[0]}") from None
        ids = tokenizer(text_path.read_text(errors="replace"), return_tensors="pt").input_ids
        if settings.seq_len is not None:
            if ids.shape[1] < settings.seq_len:
                raise CliError(
                    f"--text {text_file!r} has {ids.shape[1]} tokens, fewer than --seq-len {settings.seq_len}"
                )
            ids = ids[:, : settings.seq_len]
    else:
        vocab = getattr(config, "vocab_size", None)
        if not isinstance(vocab, int) or vocab < 1:
            raise CliError(f"MODEL {spec!r}: its config has no vocab_size to generate token ids from; pass --inputs")
        n, b = settings.seq_len or DEFAULT_SEQ_LEN, settings.batch or 1
        generator = torch.Generator().manual_seed(settings.seed)
        ids = torch.randint(0, vocab, (b, n), generator=generator)
    inputs: dict[str, Any] = {"input_ids": ids}
    if "use_cache" in inspect.signature(model.forward).parameters:
        inputs["use_cache"] = False  # torch.export cannot return the cache object (DESIGN §5)
    return inputs
