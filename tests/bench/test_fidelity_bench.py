"""The fidelity benchmark end to end at a toy size: JSON shape, summary, and resuming."""

from __future__ import annotations

import json

import pytest

from delta_opt import DeltaConfig
from delta_opt.bench.fidelity import markdown_table, run


SMALL = dict(n_tokens=160, eval_tokens=32, trials=2, texts=("argparse",), probes=("copy",),
             configs={"W16_S4_G8": DeltaConfig(window=16, sinks=4, stride=8, tail=16)})  # fmt: skip


@pytest.mark.real_model
def test_runs_summarizes_and_resumes(smollm2, tmp_path):
    partial = tmp_path / "progress.json"
    lines: list[str] = []
    result = run(partial=partial, model_and_tokenizer=smollm2, log=lines.append, **SMALL)
    assert len(lines) == 3  # 1 text + 2 trials
    summary = result["summary"]
    assert set(summary) == {"dense", "W16_S4_G8/sparse", "W16_S4_G8/sparse_tail", "W16_S4_G8/delta"}
    assert "copy_mean_nll" in summary["dense"] and "perplexity_argparse" in summary["W16_S4_G8/delta"]
    delta = result["units"]["text/argparse"]["configs"]["W16_S4_G8"]["variants"]["delta"]
    assert len(delta["layers"]["isolated"]["sqnr_db"]) == 30
    assert "| W16_S4_G8/delta |" in markdown_table(summary)
    json.dumps(result)  # serialisable

    # Drop one unit: a rerun computes that one only and gives the same summary.
    state = json.loads(partial.read_text())
    del state["units"]["copy/001"]
    partial.write_text(json.dumps(state))
    lines.clear()
    again = run(partial=partial, model_and_tokenizer=smollm2, log=lines.append, **SMALL)
    assert [line for line in lines if "done in" in line] == [lines[-1]] and "copy/001" in lines[-1]
    assert again["summary"]["dense"] == pytest.approx(summary["dense"])

    with pytest.raises(ValueError, match="other parameters"):
        run(partial=partial, model_and_tokenizer=smollm2, log=lines.append, **{**SMALL, "trials": 3})


def test_spread_order_covers_depths_early():
    from delta_opt.bench.fidelity import spread_order

    order = spread_order(20)
    assert sorted(order) == list(range(20))
    assert order[:3] == [0, 19, 9]
    assert max(order[:5]) - min(order[:5]) == 19
    assert spread_order(0) == [] and spread_order(1) == [0]
