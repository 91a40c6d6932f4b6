import json

import pytest

from llmq.errors import OutputExistsError
from llmq.io import atomic_dir, check_output, write_json


def test_atomic_dir_success_and_failure(tmp_path):
    out = tmp_path / "model"
    with atomic_dir(out) as tmp:
        (tmp / "a.txt").write_text("x")
        assert not out.exists()  # nothing visible until complete
    assert (out / "a.txt").read_text() == "x"
    with pytest.raises(RuntimeError):
        with atomic_dir(tmp_path / "broken") as tmp:
            (tmp / "half.safetensors").write_text("half")
            raise RuntimeError("crash mid-write")
    assert not (tmp_path / "broken").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["model"]  # no temp folder left behind


def test_refuses_non_empty_output_and_keeps_it(tmp_path):
    out = tmp_path / "model"
    out.mkdir()
    (out / "keep.txt").write_text("precious")
    with pytest.raises(OutputExistsError, match="--overwrite"):
        with atomic_dir(out):
            pass
    assert (out / "keep.txt").read_text() == "precious"
    with pytest.raises(OutputExistsError):
        check_output(out / "keep.txt", overwrite=True)  # a file is never an output folder


def test_overwrite_replaces_only_after_success(tmp_path):
    out = tmp_path / "model"
    out.mkdir()
    (out / "old.txt").write_text("old")
    with pytest.raises(OutputExistsError, match="not an llmq output"):
        check_output(out, overwrite=True)  # --overwrite replaces only a folder llmq wrote
    (out / "llmq.json").write_text("{}")
    assert check_output(out, overwrite=True) == out
    with pytest.raises(RuntimeError):
        with atomic_dir(out, overwrite=True):
            raise RuntimeError("crash")
    assert (out / "old.txt").read_text() == "old"  # the old folder survives a failed overwrite
    with atomic_dir(out, overwrite=True) as tmp:
        (tmp / "new.txt").write_text("new")
    assert sorted(p.name for p in out.iterdir()) == ["new.txt"]


def test_write_json_roundtrip(tmp_path):
    write_json(tmp_path / "a.json", {"x": 1})
    assert json.loads((tmp_path / "a.json").read_text()) == {"x": 1}


def test_atomic_file_failure_names_the_file_and_leaves_nothing(tmp_path, monkeypatch):
    import errno
    from pathlib import Path

    from llmq.errors import resource_error
    from llmq.io import write_text

    def full(self, *a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(Path, "write_text", full)
    with pytest.raises(OSError) as e:
        write_text(tmp_path / "report.json", "{}")
    monkeypatch.undo()
    assert f"No space left on the device: {tmp_path / 'report.json'};" in str(resource_error(e.value))
    assert list(tmp_path.iterdir()) == []
