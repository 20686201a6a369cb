"""Checkpoints that prove they are whole: a manifest of sizes and SHA-256, verified at load."""
from __future__ import annotations

import json
import shutil

import pytest

from reasoner.cli import main
from reasoner.errors import ReasonerError
from reasoner.model import load_model, save_checkpoint
from reasoner.rl.checkpoints import (MANIFEST, MARKER, CheckpointDamaged, latest_complete_checkpoint, mark_complete,
                                     verify_manifest)


@pytest.fixture(scope="module")
def saved(tmp_path_factory, tiny):
    model, tokenizer = tiny
    return save_checkpoint(model, tokenizer, tmp_path_factory.mktemp("whole") / "ckpt")


@pytest.fixture
def ckpt(saved, tmp_path):
    return shutil.copytree(saved, tmp_path / "ckpt")


def _flip(path, offset, length=4096):
    data = bytearray(path.read_bytes())
    for i in range(offset, offset + length):
        data[i] ^= 0xFF
    path.write_bytes(bytes(data))


def _one_clear_message(err: pytest.ExceptionInfo, *words: str) -> str:
    text = str(err.value)
    assert "\n" not in text, text
    for word in words:
        assert word in text, text
    return text


def test_save_checkpoint_writes_a_manifest_of_every_file(ckpt):
    files = json.loads((ckpt / MANIFEST).read_text())["files"]
    on_disk = {p.name for p in ckpt.iterdir() if p.name != MANIFEST}
    assert set(files) == on_disk and {"model.safetensors", "config.json", "tokenizer.json", "reasoner.json"} <= on_disk
    assert files["model.safetensors"]["size"] == (ckpt / "model.safetensors").stat().st_size
    assert len(files["model.safetensors"]["sha256"]) == 64
    assert verify_manifest(ckpt) is True
    load_model(ckpt)


def test_truncated_weights_are_named(ckpt):
    weights = ckpt / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    with pytest.raises(ReasonerError) as err:
        load_model(ckpt)
    _one_clear_message(err, "model.safetensors", "truncated", "checkpoint damaged")


def test_flipped_bytes_are_caught_by_the_checksum(ckpt):
    weights = ckpt / "model.safetensors"
    _flip(weights, weights.stat().st_size // 2)
    with pytest.raises(CheckpointDamaged) as err:
        load_model(ckpt)
    _one_clear_message(err, "model.safetensors", "SHA-256")
    load_model(ckpt, verify=False)  # the caller's choice: loaded as it is


def test_skip_checksums_by_environment(ckpt, monkeypatch):
    _flip(ckpt / "model.safetensors", (ckpt / "model.safetensors").stat().st_size // 2)
    monkeypatch.setenv("REASONER_SKIP_CHECKSUMS", "1")
    load_model(ckpt)
    with pytest.raises(CheckpointDamaged, match="SHA-256"):
        load_model(ckpt, verify=True)  # asked for explicitly
    (ckpt / "tokenizer.json").write_text("{}")  # a size change is still caught without hashing
    with pytest.raises(CheckpointDamaged, match="tokenizer.json"):
        load_model(ckpt)


def test_garbage_tokenizer_is_named(ckpt):
    (ckpt / "tokenizer.json").write_bytes(b"\xff\xfe garbage \x00" * 50)
    with pytest.raises(ReasonerError) as err:
        load_model(ckpt)
    _one_clear_message(err, "tokenizer.json")


def test_missing_file_is_named(ckpt):
    (ckpt / "config.json").rename(ckpt / "config.json.bak")
    (ckpt / "config.json").write_text((ckpt / "config.json.bak").read_text() + " ")
    (ckpt / "tokenizer_config.json").unlink()
    with pytest.raises(CheckpointDamaged) as err:
        load_model(ckpt)
    _one_clear_message(err, "tokenizer_config.json is missing", "config.json is")


@pytest.mark.parametrize("damage", ["truncate", "flip", "tokenizer", "tokenizer_config", "config"])
def test_without_a_manifest_damage_is_still_one_clear_error(ckpt, damage):
    (ckpt / MANIFEST).unlink()  # an older checkpoint, or a hub download
    weights = ckpt / "model.safetensors"
    if damage == "truncate":
        weights.write_bytes(weights.read_bytes()[:1000])
    elif damage == "flip":
        _flip(weights, 0, 64)  # the header: safetensors cannot parse it
    elif damage == "tokenizer":
        (ckpt / "tokenizer.json").write_bytes(b"\x80\x81 not json")
    elif damage == "tokenizer_config":
        (ckpt / "tokenizer_config.json").write_bytes(b"\xff\xff")
    else:
        (ckpt / "config.json").write_bytes(b"{\"model_type\": ")
    with pytest.raises(ReasonerError) as err:
        load_model(ckpt)
    text = _one_clear_message(err, str(ckpt))
    assert ("tokenizer" in text) == damage.startswith("tokenizer")
    for raw in ("SafetensorError", "UnicodeDecodeError", "KeyError"):
        assert not text.startswith(raw)


def test_checkpoints_without_a_manifest_still_load(ckpt, capsys):
    (ckpt / MANIFEST).unlink()
    assert verify_manifest(ckpt) is False
    load_model(ckpt)
    err = capsys.readouterr().err
    assert "manifest" not in err.lower() and "checksum" not in err.lower()  # at most transformers' own bar


def test_cli_names_the_damaged_file(ckpt, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("REASONER_HOME", str(tmp_path))
    _flip(ckpt / "model.safetensors", (ckpt / "model.safetensors").stat().st_size // 2)
    assert main(["solve", "--model", str(ckpt), "1+1"]) == 2
    err = capsys.readouterr().err
    assert "model.safetensors" in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_trainer_checkpoints_get_a_manifest_and_damaged_ones_are_not_resumed(tmp_path, capsys):
    for step in (2, 4):
        folder = tmp_path / f"checkpoint-{step}"
        folder.mkdir()
        (folder / "config.json").write_text("{}")
        (folder / "optimizer.pt").write_bytes(bytes(range(256)) * 64)
        mark_complete(folder, step)
        assert (folder / MARKER).read_text() == str(step) and (folder / MANIFEST).is_file()
    assert latest_complete_checkpoint(tmp_path) == str(tmp_path / "checkpoint-4")
    _flip(tmp_path / "checkpoint-4" / "optimizer.pt", 100, 8)
    assert latest_complete_checkpoint(tmp_path) == str(tmp_path / "checkpoint-2")
    assert (tmp_path / "checkpoint-4.damaged").is_dir()
    assert "optimizer.pt" in capsys.readouterr().err
