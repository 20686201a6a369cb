"""Shared fixtures: a real tiny model, built once per session from configs/models/tiny.yaml."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DATA = REPO / "reasoner" / "data"   # GSM8K test and MATH-500, shipped with the package

# Tests share 2 cores with each other's subprocesses; more threads only add contention.
os.environ.setdefault("OMP_NUM_THREADS", "2")


@pytest.fixture(scope="session")
def tiny():
    from reasoner.model import load_model

    return load_model("tiny")


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory, tiny):
    from reasoner.model import save_checkpoint

    model, tokenizer = tiny
    return save_checkpoint(model, tokenizer, tmp_path_factory.mktemp("ckpt") / "tiny", {"purpose": "tests"})


@pytest.fixture(scope="module")
def one_thread():
    """Small ops: one thread is fastest here and does not fight other jobs for the 2 cores (restored after)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
