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
    from llmq.owners import start_ticks

    # this pid, started at another time: the pid was reused, the lock's owner is gone
    outdir.lock_path(out).write_text(json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                                                 "start": start_ticks(os.getpid()) + 1}))
    with outdir.output_lock(out):
        pass


def _token(pid: int, start: int = 0, host: str | None = None) -> str:
    from llmq.owners import host_id

    return f"{pid}-{start}-{host or host_id()}-abcdefgh"


def test_debris_removed_and_old_result_restored(tmp_path, capsys):
    out = tmp_path / "o"
    dead = _dead_pid()
    (tmp_path / f".o.{_token(dead)}.incomplete").mkdir()
    old = tmp_path / f".o.{_token(dead, 5)}.old"
    old.mkdir()
    (old / "weights").write_text("old")
    (tmp_path / f".other.{_token(dead)}.incomplete").mkdir()  # another output's debris: not ours
    actions = outdir.clean_debris(out)
    assert len(actions) == 2 and "restored" in actions[1] and "removed" in actions[0]
    assert (out / "weights").read_text() == "old"
    assert outdir.debris(out) == [] and (tmp_path / f".other.{_token(dead)}.incomplete").exists()
    assert capsys.readouterr().err.count("llmq: note:") == 2


def test_debris_is_exactly_this_outputs_and_only_what_dead_processes_left(tmp_path):
    """The issue's case: outputs ``o`` and ``o.v2`` in one parent. Cleaning ``o`` never touches an
    entry of ``o.v2`` (the owner token has no dot, so names parse one way), and never one whose owner
    still runs: this process, a live child, a pid reused by a newer process is dead, another host's is kept."""
    from llmq.owners import start_ticks

    dead = _dead_pid()
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        me, start = os.getpid(), start_ticks(os.getpid())
        keep = [f".o.{_token(me, start)}.incomplete",                      # this process, still writing
                f".o.{_token(live.pid, start_ticks(live.pid))}.incomplete",  # a live process
                f".o.{_token(dead, 0, '000000')}.incomplete",                # another host: not judged here
                f".o.v2.{_token(dead)}.incomplete", f".o.v2.{dead}-abcdefgh.incomplete",  # o.v2's, dead or not
                f".o.v2.old-{dead}", ".o.lock", ".o.qat-checkpoint", ".o.123-abc.incomplete"]
        gone = [f".o.{_token(dead)}.incomplete", f".o.{_token(me, start + 1)}.incomplete",  # dead; reused pid
                f".o.{dead}-abcdefgh.incomplete", f".o.{dead}-auto-abcdefgh.incomplete"]   # older llmq's names
        for n in keep + gone:
            (tmp_path / n).mkdir()
        assert [p.name for p in outdir.debris(tmp_path / "o")] == sorted(gone)
        outdir.clean_debris(tmp_path / "o", log=False)
        assert sorted(p.name for p in tmp_path.iterdir()) == sorted(keep)
        # and from o.v2's side: only its own dead entries (its old folder is restored as o.v2)
        outdir.clean_debris(tmp_path / "o.v2", log=False)
        assert sorted(p.name for p in tmp_path.iterdir()) == sorted(set(keep) - {
            f".o.v2.{_token(dead)}.incomplete", f".o.v2.{dead}-abcdefgh.incomplete", f".o.v2.old-{dead}"} | {"o.v2"})
    finally:
        live.kill()
        live.wait()


def test_symlink_debris_is_unlinked_not_followed_and_reported_truthfully(tmp_path):
    target = tmp_path / "precious"
    target.mkdir()
    (target / "f").write_text("keep")
    link = tmp_path / f".o.{_dead_pid()}-abcdefgh.incomplete"
    link.symlink_to(target)
    assert outdir.clean_debris(tmp_path / "o", log=False) == [f"removed {link} (left by a killed run)"]
    assert not os.path.lexists(link) and (target / "f").read_text() == "keep"
    assert outdir.clean_debris(tmp_path / "o", log=False) == []  # nothing claimed twice


def test_symlinked_output_is_written_where_it_points(tmp_path):
    """``-o link`` replaces the link's target (the link stays) and leaves nothing beside either."""
    target = tmp_path / "real" / "o"
    with outdir.atomic_output(target) as tmp:
        (tmp / "llmq.json").write_text("{}")
    (tmp_path / "links").mkdir()
    link = tmp_path / "links" / "o"
    link.symlink_to(target)
    with outdir.atomic_output(link, overwrite=True) as tmp:
        assert tmp.parent == target.parent
        (tmp / "llmq.json").write_text('{"new": 1}')
    assert link.is_symlink() and (link / "llmq.json").read_text() == '{"new": 1}'
    assert sorted(p.name for p in (tmp_path / "links").iterdir()) == ["o"]
    assert sorted(p.name for p in (tmp_path / "real").iterdir()) == ["o"]


def test_overwrite_replaces_only_llmq_outputs_or_empty_folders(tmp_path):
    home = tmp_path / "home"
    (home / ".ssh").mkdir(parents=True)
    (home / ".bashrc").write_text("alias ll='ls -l'")
    (home / ".ssh" / "id_ed25519").write_text("secret")
    with pytest.raises(OutputExistsError, match="not an llmq output.*Nothing was touched"):
        with outdir.atomic_output(home, overwrite=True) as tmp:
            (tmp / "llmq.json").write_text("{}")
    assert sorted(p.name for p in home.iterdir()) == [".bashrc", ".ssh"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["home"]  # no lock, no temp folder
    for marker in outdir.OUTPUT_MARKERS:  # a folder llmq wrote is replaced
        d = tmp_path / f"llmq-{marker.strip('.')}"
        d.mkdir()
        (d / marker).write_text("{}")
        (d / "extra").write_text("x")
        with outdir.atomic_output(d, overwrite=True) as tmp:
            (tmp / "new").write_text("y")
        assert [p.name for p in d.iterdir()] == ["new"]
    (tmp_path / "empty").mkdir()
    with outdir.atomic_output(tmp_path / "empty", overwrite=False) as tmp:
        (tmp / "new").write_text("y")
    link = tmp_path / "fake"
    link.mkdir()
    (link / "llmq.json").symlink_to(home / ".bashrc")  # a link named llmq.json is not llmq's record
    assert not outdir.is_llmq_folder(link)


def test_output_markers_are_the_names_llmq_writes():
    from llmq.backends.qat.train import CKPT_META, LEGACY_CKPT
    from llmq.meta import META_FILE
    from llmq.models import SOURCES_FILE
    from llmq.pipeline.auto import REPORT

    assert set(outdir.OUTPUT_MARKERS) == {META_FILE, f"{REPORT}.json", SOURCES_FILE, CKPT_META, LEGACY_CKPT}


@pytest.mark.parametrize("name", [".", "./", "sub/..", "..", "", "/"])
def test_dot_and_parent_outputs_are_refused(tmp_path, monkeypatch, name):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "sub").mkdir()
    (tmp_path / "llmq.json").write_text("{}")  # even an llmq output: replacing the current folder is refused
    with pytest.raises(ConfigError, match="does not name a folder of its own|current folder"):
        with outdir.atomic_output(name, overwrite=True):
            pass
    with pytest.raises(ConfigError, match="parent of the current folder"):
        outdir.reserve_output(tmp_path.parent, overwrite=True).__enter__()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["llmq.json", "sub"]


def test_lock_waits_for_another_writer_when_asked(tmp_path):
    out = tmp_path / "o"
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time\nfrom llmq.outdir import output_lock\n"
        f"with output_lock({str(out)!r}):\n    print('locked', flush=True)\n    time.sleep(2)\n")],
        stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": os.getcwd()})
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(OutputLockedError, match="waited 0 s|being written"):
            with outdir.output_lock(out, wait=0.3):
                pass
        notes = []
        with outdir.output_lock(out, wait=30, note=notes.append) as lock:
            assert json.loads(lock.read_text())["pid"] == os.getpid()
        assert len(notes) == 1 and f"pid {holder.pid}" in notes[0] and "waiting up to 30 s" in notes[0]
    finally:
        holder.kill()
        holder.wait()


def test_atomic_output_commit_replace_and_failure(tmp_path):
    out = tmp_path / "o"
    with outdir.atomic_output(out) as tmp:
        assert tmp.name.startswith(f".o.{os.getpid()}-") and tmp.name.endswith(".incomplete")
        (tmp / "a").write_text("1")
        (tmp / "llmq.json").write_text("{}")
        assert not out.exists()
    assert (out / "a").read_text() == "1" and out in outdir.COMMITTED
    with pytest.raises(OutputExistsError):
        with outdir.atomic_output(out):
            pass
    with pytest.raises(KeyboardInterrupt):
        with outdir.atomic_output(out, overwrite=True) as tmp:
            (tmp / "b").write_text("2")
            raise KeyboardInterrupt
    assert sorted(p.name for p in out.iterdir()) == ["a", "llmq.json"]
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
    (out / "llmq.json").write_text("{}")
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


def test_folders_made_for_the_lock_are_removed_when_left_empty(tmp_path):
    """A run that fails before writing (an unreachable Hub id, say) left an empty ``out/`` behind:
    the parents made only to hold the lock go again; a parent that gets content stays."""
    out = tmp_path / "a" / "b" / "o"
    with pytest.raises(RuntimeError):
        with outdir.output_lock(out):
            assert (tmp_path / "a" / "b").is_dir()
            raise RuntimeError("failed before writing")
    assert list(tmp_path.iterdir()) == []
    with outdir.atomic_output(out) as tmp:
        (tmp / "llmq.json").write_text("{}")
    assert (out / "llmq.json").is_file()
