"""The `reasoner` command as a user runs it: a real subprocess of the installed entry point."""
from __future__ import annotations

import subprocess
import sys

import pytest

from reasoner.cli import SUBCOMMANDS, build_parser


def reasoner(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "reasoner", *args], capture_output=True, text=True,
                          timeout=300, cwd=cwd)


def test_top_level_help_lists_every_subcommand():
    result = reasoner("--help")
    assert result.returncode == 0
    for name in ("demo", "train", "eval", "solve", "traces", "info"):
        assert name in result.stdout


@pytest.mark.parametrize("name", SUBCOMMANDS)
def test_each_subcommand_has_help(name, capsys):
    with pytest.raises(SystemExit) as exit_:
        build_parser().parse_args([name, "--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    assert "usage: reasoner " + name in out
    assert "not yet available" not in out


def test_info_prints_the_deepseek_v3_figures():
    result = reasoner("info", "deepseek-v3")
    assert result.returncode == 0, result.stderr
    assert "684.49B total" in result.stdout and "mtp" in result.stdout and "36.63B activated" in result.stdout
    for part in ("attention", "dense mlp", "shared experts", "routed experts", "embeddings"):
        assert part in result.stdout


def test_info_on_a_checkpoint(tiny_checkpoint):
    result = reasoner("info", str(tiny_checkpoint), "--json")
    assert result.returncode == 0, result.stderr
    assert '"routed_experts"' in result.stdout


@pytest.mark.parametrize("args, message", [
    (("info", "no-such-model"), "no model config named 'no-such-model'"),
    (("info", "/nonexistent/model.yaml"), "file not found"),
    (("train", "/nonexistent/recipe.yaml"), "file not found"),
    (("train", "demo", "--set", "grpo.betta=0.1"), "did you mean 'beta'"),
])
def test_user_mistakes_are_one_line_errors_not_tracebacks(args, message):
    result = reasoner(*args)
    assert result.returncode == 2
    assert message in result.stderr
    assert "Traceback" not in result.stderr
