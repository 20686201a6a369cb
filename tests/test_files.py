"""reasoner.files: the one home of atomic writes (exports, datasets, summaries, endpoint results)."""
import json

import pytest

from reasoner.errors import ReasonerError
from reasoner.files import atomic_open, write_json_atomically, write_jsonl_atomically


def test_a_failed_write_leaves_the_old_file_and_no_staging_file(tmp_path):
    target = tmp_path / "data.jsonl"
    write_jsonl_atomically(target, [{"a": 1}, {"b": 2}])
    with pytest.raises(RuntimeError):
        with atomic_open(target) as handle:
            handle.write("half of a new file")
            raise RuntimeError("killed mid-write")
    assert [json.loads(line) for line in target.read_text().splitlines()] == [{"a": 1}, {"b": 2}]
    assert [p.name for p in tmp_path.iterdir()] == ["data.jsonl"]


def test_a_finished_write_replaces_the_file_readable_by_others(tmp_path):
    target = write_json_atomically(tmp_path / "summary.json", {"x": 1})
    write_json_atomically(target, {"x": 2})
    assert json.loads(target.read_text()) == {"x": 2}
    assert target.stat().st_mode & 0o044  # not mkstemp's 0600


def test_a_missing_folder_is_named(tmp_path):
    with pytest.raises(ReasonerError, match="does not exist"):
        write_json_atomically(tmp_path / "nowhere" / "x.json", {})
