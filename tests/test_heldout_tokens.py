"""`benchmarks/heldout_tokens.py --record`: the split goes into a job's record only for the job's model."""

from __future__ import annotations

import json
import math

import pytest
from benchmarks.heldout_tokens import record_kinds


def _sums(mean_loss: float) -> dict:
    tokens = {"line break": 10, "line start": 10, "other": 80}
    sums = {kind: {"loss_sum": mean_loss * n, "tokens": n} for kind, n in tokens.items()}
    sums["all"] = {"loss_sum": mean_loss * 100, "tokens": 100}
    return sums


def test_the_split_is_recorded_when_the_model_is_the_jobs(tmp_path):
    record = tmp_path / "apt-d0.70-s0.json"
    record.write_text(json.dumps({"heldout_perplexity": math.exp(5.0), "peak_rss_mb": 3603}))
    record_kinds(record, _sums(5.0))
    saved = json.loads(record.read_text())
    assert saved["peak_rss_mb"] == 3603  # the rest of the record is kept
    assert saved["heldout_kinds"]["all"] == {"tokens": 100, "perplexity": pytest.approx(math.exp(5.0))}
    assert saved["heldout_kinds"]["line start"]["tokens"] == 10


def test_another_model_is_refused_and_the_record_left_as_it_was(tmp_path):
    record = tmp_path / "apt-d0.70-s0.json"
    original = json.dumps({"heldout_perplexity": math.exp(5.0)})
    record.write_text(original)
    with pytest.raises(SystemExit, match="runs/<job>/model"):
        record_kinds(record, _sums(5.01))  # 1 % off: not the model the job exported
    assert record.read_text() == original
    record.write_text(json.dumps({"heldout_perplexity": None}))
    with pytest.raises(SystemExit, match="no held-out perplexity"):
        record_kinds(record, _sums(5.0))
