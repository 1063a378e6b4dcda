"""`import delta_opt` stays light: transformers loads only when the HF integration is used."""

from __future__ import annotations

import subprocess
import sys

CODE = """
import sys, delta_opt
assert "transformers" not in sys.modules, "import delta_opt pulled in transformers"
from delta_opt import apply_to_hf, eval as ev
assert callable(apply_to_hf) and ev.Variant.DELTA.value == "delta"
assert "transformers" not in sys.modules, "delta_opt.eval pulled in transformers"
try:
    delta_opt.no_such_name
except AttributeError:
    pass
else:
    raise AssertionError("unknown attribute did not raise")
"""


def test_hf_integration_and_eval_are_lazy():
    result = subprocess.run([sys.executable, "-c", CODE], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr
