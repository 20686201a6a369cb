"""ESC and other control characters from untrusted text are shown escaped in every terminal view."""
from __future__ import annotations

import json

import pytest

from reasoner.cli import main as reasoner_main
from reasoner.progress import printable
from reasoner.traces import TraceRecorder, TraceStore, model_call_span, verification_span

TITLE = "\x1b]0;pwned\x07"      # OSC: set the terminal title
CLEAR = "\x1b[2J\x1b[H"          # clear the screen, cursor home
HOSTILE = f"1+1{TITLE}{CLEAR}\x9b31m\x7f\u202e"


def _clean(text: str) -> None:
    assert "\x1b" not in text and "\x07" not in text and "\x9b" not in text and "\x7f" not in text
    assert "\u202e" not in text


def test_printable_escapes_controls_but_keeps_layout():
    shown = printable(f"a{TITLE}b\n\tc{CLEAR}\r\x00\x85")
    assert shown == "a\\x1b]0;pwned\\x07b\n\tc\\x1b[2J\\x1b[H\\x0d\\x00\\x85"
    assert printable("a\nb\t", keep_layout=False) == "a\\x0ab\\x09"
    assert printable("plain ✔ text <think>") == "plain ✔ text <think>"
    assert printable(printable(HOSTILE)) == printable(HOSTILE)


@pytest.fixture
def store(tmp_path):
    ids = []
    with TraceStore.open(tmp_path / "t.db") as store:
        for answer in ("2", "3"):
            rec = TraceRecorder("pipeline", task="math", model=f"m{TITLE}", prompt=HOSTILE,
                                metadata={f"k{CLEAR}": f"v{TITLE}"})
            with rec.span(f"plan{CLEAR}"):
                rec.add(model_call_span(HOSTILE, f"<think>{CLEAR}</think>{answer}{TITLE}", completion_tokens=3))
            rec.add(verification_span(False, f"wrong{CLEAR}", verifier="v"))
            ids.append(store.add(rec.finish(correct=False, reward=0.0)))
    return tmp_path / "t.db", ids


@pytest.mark.parametrize("action", ["list", "show", "show --think", "diff", "list --json", "show --json"])
def test_trace_views_escape_control_characters(store, action, capsys):
    path, ids = store
    words = action.split()
    args = ["traces", "--store", str(path), words[0]]
    if words[0] == "show":
        args.append(ids[0])
    elif words[0] == "diff":
        args += ids
    assert reasoner_main(args + words[1:]) == 0
    out, err = capsys.readouterr()
    _clean(out + err)
    if "--json" in words:
        json.loads(out)  # still valid JSON
    elif words[0] != "list":
        assert "\\x1b]0;pwned\\x07" in out


def test_solve_progress_lines_escape_control_characters(capsys):
    from reasoner.cli.solve import print_progress

    print_progress({"node": "sample", "step": 1, "question": HOSTILE})
    print_progress({"node": "answer", "answer": f"2{CLEAR}", "status": "verified"})
    print_progress({"node": "other", "x": TITLE})
    err = capsys.readouterr().err
    _clean(err)
    assert "\\x1b[2J" in err and len(err.splitlines()) == 3


def test_training_progress_escapes_control_characters(capsys):
    from types import SimpleNamespace

    from reasoner.rl.progress import CompactProgress

    bar = CompactProgress(f"grpo{TITLE}")
    state = SimpleNamespace(is_world_process_zero=True, max_steps=2, global_step=0)
    bar.on_train_begin(None, state, None)
    bar.on_log(None, state, None, logs={"loss": 0.5})
    bar.on_train_end(None, state, None)
    _clean(capsys.readouterr().err)
