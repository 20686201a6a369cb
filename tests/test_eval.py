"""`reasoner eval` end to end on the tiny checkpoint (random weights score 0: this tests the plumbing)."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pytest

from reasoner.cli import main

CI = r"\d+\.\d% \[\d+\.\d, \d+\.\d\]"


@pytest.mark.slow
def test_eval_prints_metrics_with_cis_and_writes_one_line_per_problem(tiny_checkpoint, tmp_path):
    output = tmp_path / "countdown.jsonl"
    env = {**os.environ, "OMP_NUM_THREADS": "2"}
    result = subprocess.run(
        [sys.executable, "-m", "reasoner", "eval", "--model", str(tiny_checkpoint), "--task", "countdown",
         "--samples", "4", "--n", "8", "--max-new-tokens", "24", "--output", str(output)],
        capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode == 0, result.stderr
    for metric in ("pass@1", "maj@4", "pass@4"):
        assert re.search(rf"{metric}\s+{CI}", result.stdout), result.stdout
    rows = [json.loads(line) for line in output.read_text().splitlines()]
    assert len(rows) == 8 and len({r["id"] for r in rows}) == 8
    assert all(len(r["completions"]) == 4 and len(r["correct"]) == 4 and "maj@4" in r for r in rows)


@pytest.mark.parametrize("argv, message", [
    (["--model", "tiny", "--task", "nope"], "unknown task 'nope'"),
    (["--model", "no-such-model", "--task", "countdown", "--n", "2"], "no model config named 'no-such-model'"),
    (["--model", "tiny", "--task", "countdown", "--level", "9"], "has no level 9"),
    (["--model", "tiny", "--task", "gsm8k", "--split", "train"], "only the 'heldout' split"),
])
def test_eval_user_mistakes_are_one_line_errors(argv, message, capsys):
    assert main(["eval", *argv]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_eval_without_shared_data_says_where_to_put_it(monkeypatch, tmp_path, capsys):
    from reasoner.tasks.real import GSM8KTask

    monkeypatch.setenv("REASONER_DATA", str(tmp_path))
    GSM8KTask.load.cache_clear()
    assert main(["eval", "--model", "tiny", "--task", "gsm8k"]) == 2
    GSM8KTask.load.cache_clear()
    assert "gsm8k_test.jsonl not found" in capsys.readouterr().err
