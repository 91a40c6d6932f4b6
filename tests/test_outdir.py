import json
import os
import subprocess
import sys

import pytest

from llmq import outdir
from llmq.errors import ConfigError, OutputExistsError, OutputLockedError


def _dead_pid() -> int:
    return int(subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                              capture_output=True, text=True).stdout)


def test_location_is_contains_inside(tmp_path):
    src = tmp_path / "m" / "src"
    src.mkdir(parents=True)
    (src / "config.json").write_text("{}")
    for out in (src, src / "sub", tmp_path / "m", tmp_path):
        with pytest.raises(ConfigError, match="input"):
            outdir.check_location(out, [src])
    outdir.check_location(tmp_path / "m" / "other", [src, None, tmp_path / "missing"])
    link = tmp_path / "link"
    link.symlink_to(src)
    with pytest.raises(ConfigError):
        outdir.check_location(link, [src])  # a symlink to the source is the source
    gguf = tmp_path / "g" / "x.gguf"
    gguf.parent.mkdir()
    gguf.write_bytes(b"GGUF")
    with pytest.raises(ConfigError):
        outdir.check_location(gguf.parent, [gguf])


def test_writable(tmp_path):
    outdir.check_writable(tmp_path / "a" / "b")
    (tmp_path / "f").write_text("x")
    with pytest.raises(ConfigError, match="is a file"):
        outdir.check_writable(tmp_path / "f" / "sub")
    with pytest.raises(OutputExistsError):
        outdir.check_writable(tmp_path / "f")
    with pytest.raises(ConfigError, match="not writable"):
        outdir.check_writable("/proc/llmq-test-output")
    assert not list(tmp_path.glob(".llmq-write-test-*"))


def test_a_gguf_file_protects_itself_not_its_folder(tmp_path):
    """A .gguf source is one file: a subfolder beside it is a fair output; its folder (which
    contains it) and the file itself are not."""
    g = tmp_path / "models" / "x.gguf"
    g.parent.mkdir()
    g.write_bytes(b"GGUF")
    outdir.check_location(g.parent / "x-q8", [g])
    outdir.check_location(g.parent / "out" / "x-q8", [g])
    for bad in (g, g.parent, tmp_path):
        with pytest.raises(ConfigError, match="input model"):
            outdir.check_location(bad, [g])


def test_dangling_symlink_and_overlong_name_are_refused_before_work(tmp_path):
    from llmq.errors import ResourceError

    link = tmp_path / "out"
    link.symlink_to(tmp_path / "nowhere" / "x")
    with pytest.raises(ConfigError, match="symlink to .*nowhere/x, which does not exist"):
        outdir.check_writable(link)
    # 240 characters fit a file system's 255, the temp folder ``.NAME.<pid>-<random>.incomplete`` does not
    with pytest.raises(ResourceError, match="File name too long: .*x{240}; choose a shorter name"):
        outdir.check_writable(tmp_path / ("x" * 240))
    outdir.check_writable(tmp_path / ("x" * 200))


def test_a_failed_write_names_the_output_it_was_writing(tmp_path):
    """``write`` on a full disk raises an OSError naming no file; the atomic writer records which
    output it was, so the CLI's one line can name it, and nothing is left behind."""
    import errno

    from llmq.errors import resource_error

    out = tmp_path / "o"
    with pytest.raises(OSError) as e:
        with outdir.atomic_output(out) as tmp:
            (tmp / "part").write_text("x")
            raise OSError(errno.ENOSPC, "No space left on device")
    assert f"No space left on the device: {out};" in str(resource_error(e.value))
    assert not out.exists() and outdir.debris(out) == [] and not list(tmp_path.iterdir())


def test_lock_exclusive_and_stale(tmp_path):
    out = tmp_path / "o"
    with outdir.output_lock(out) as lock:
        assert json.loads(lock.read_text())["pid"] == os.getpid()
        with pytest.raises(OutputLockedError, match=f"pid {os.getpid()}"):
            with outdir.output_lock(out):
                pass
    assert not outdir.lock_path(out.absolute()).exists()
    import socket

    outdir.lock_path(out).write_text(json.dumps({"pid": _dead_pid(), "host": socket.gethostname()}))
    with outdir.output_lock(out):  # a dead pid's lock is taken over
        pass
    outdir.lock_path(out).write_text(json.dumps({"pid": 1, "host": "another-host"}))
    with pytest.raises(OutputLockedError, match="another-host"):
        with outdir.output_lock(out):
            pass


def test_debris_removed_and_old_result_restored(tmp_path, capsys):
    out = tmp_path / "o"
    (tmp_path / ".o.123-abc.incomplete").mkdir()
    old = tmp_path / f".o.old-{_dead_pid()}"
    old.mkdir()
    (old / "weights").write_text("old")
    (tmp_path / ".other.1-x.incomplete").mkdir()  # another output's debris: not ours
    actions = outdir.clean_debris(out)
    assert len(actions) == 2 and "restored" in actions[1]
    assert (out / "weights").read_text() == "old"
    assert outdir.debris(out) == [] and (tmp_path / ".other.1-x.incomplete").exists()
    assert capsys.readouterr().err.count("llmq: note:") == 2


def test_atomic_output_commit_replace_and_failure(tmp_path):
    out = tmp_path / "o"
    with outdir.atomic_output(out) as tmp:
        assert tmp.name.startswith(f".o.{os.getpid()}-") and tmp.name.endswith(".incomplete")
        (tmp / "a").write_text("1")
        assert not out.exists()
    assert (out / "a").read_text() == "1" and out in outdir.COMMITTED
    with pytest.raises(OutputExistsError):
        with outdir.atomic_output(out):
            pass
    with pytest.raises(KeyboardInterrupt):
        with outdir.atomic_output(out, overwrite=True) as tmp:
            (tmp / "b").write_text("2")
            raise KeyboardInterrupt
    assert sorted(p.name for p in out.iterdir()) == ["a"]
    with outdir.atomic_output(out, overwrite=True) as tmp:
        (tmp / "b").write_text("2")
    assert sorted(p.name for p in out.iterdir()) == ["b"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["o"]  # no lock, temp or old folder left


def test_output_appearing_during_the_write_is_not_deleted(tmp_path):
    """overwrite=False is checked again at commit time: a result that appeared meanwhile survives."""
    out = tmp_path / "o"
    with pytest.raises(OutputExistsError):
        with outdir.atomic_output(out) as tmp:
            (tmp / "mine").write_text("x")
            out.mkdir()
            (out / "theirs").write_text("y")
    assert sorted(p.name for p in out.iterdir()) == ["theirs"]


def test_commit_fallback_without_exchange(tmp_path, monkeypatch):
    monkeypatch.setattr(outdir, "_exchange", lambda a, b: False)
    out = tmp_path / "o"
    out.mkdir()
    (out / "old").write_text("x")
    with outdir.atomic_output(out, overwrite=True) as tmp:
        (tmp / "new").write_text("y")
    assert [p.name for p in out.iterdir()] == ["new"] and sorted(p.name for p in tmp_path.iterdir()) == ["o"]


def test_interrupt_message(monkeypatch, tmp_path):
    monkeypatch.setattr(outdir, "COMMITTED", [])
    assert "nothing was written" in outdir.interrupt_message()
    monkeypatch.setattr(outdir, "COMMITTED", [tmp_path / "o"])
    assert f"{tmp_path / 'o'} had been written completely" in outdir.interrupt_message()


def test_canonical_safetensors_metadata(tmp_path):
    import torch
    from safetensors import safe_open
    from safetensors.torch import save_file

    f = tmp_path / "m.safetensors"
    meta = {f"k{i}": str(i) for i in (5, 1, 9, 3, 7, 2)}
    save_file({"w": torch.arange(6.0)}, str(f), metadata=meta)
    size = f.stat().st_size
    outdir.canonicalize_safetensors_metadata(f)
    n = int.from_bytes(f.read_bytes()[:8], "little")
    header = json.loads(f.read_bytes()[8:8 + n])
    assert list(header["__metadata__"]) == sorted(meta) and f.stat().st_size == size
    with safe_open(str(f), "pt") as st:
        assert st.metadata() == meta and torch.equal(st.get_tensor("w"), torch.arange(6.0))
    assert outdir.canonicalize_safetensors_metadata(f) is False  # idempotent
