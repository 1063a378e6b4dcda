"""Real models the project can obtain offline (see DESIGN §4)."""

from .smollm2 import ModelUnavailable, load_smollm2, smollm2_gguf

__all__ = ["ModelUnavailable", "load_smollm2", "smollm2_gguf"]
