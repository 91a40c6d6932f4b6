import os
import re
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from llmq import owners

ROOT = Path(__file__).resolve().parents[1]


def test_token_names_this_process_and_has_no_dot():
    t = owners.owner_token()
    m = re.fullmatch(owners.TOKEN, t)
    assert m and "." not in t and int(m["pid"]) == os.getpid()
    assert owners.token_alive(m) and t != owners.owner_token()  # random part: two names never collide


def test_owner_alive_judges_dead_reused_and_foreign_owners():
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    assert not owners.owner_alive(p.pid)  # exited (and reaped)
    me = os.getpid()
    assert owners.owner_alive(me, owners.start_ticks(me))
    assert not owners.owner_alive(me, owners.start_ticks(me) + 1)  # same pid, another start: reused
    assert owners.owner_alive(p.pid, 0, "000000" if owners.host_id() != "000000" else "111111")  # another host
    z = subprocess.Popen([sys.executable, "-c", "pass"])
    import time

    time.sleep(1.0)  # exited, not reaped yet: a zombie answers kill(pid, 0) but is dead
    assert not owners.owner_alive(z.pid)
    z.wait()


def test_scratch_of_a_killed_process_is_removed_by_the_next_one(tmp_path):
    """A SIGKILL during GGUF conversion used to leave its scratch folder in the temp directory forever;
    now the next scratch folder removes it, and a live process's scratch is kept."""
    code = textwrap.dedent(f"""
        import os, signal, time
        from llmq.owners import make_scratch
        d = make_scratch("gguf", {str(tmp_path)!r})
        (d / "model-f32.gguf").write_bytes(b"x" * 1000)
        print(d, flush=True)
        if os.environ.get("DIE"):
            os.kill(os.getpid(), signal.SIGKILL)
        time.sleep(60)
        """)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    killed = subprocess.run([sys.executable, "-c", code], env={**env, "DIE": "1"}, capture_output=True, text=True)
    assert killed.returncode == -signal.SIGKILL
    left = Path(killed.stdout.strip())
    assert left.is_dir() and left.name.startswith("llmq-scratch.gguf.")
    live = subprocess.Popen([sys.executable, "-c", code], env=env, stdout=subprocess.PIPE, text=True)
    try:
        kept = Path(live.stdout.readline().strip())  # its make_scratch already swept the dead one
        assert not left.exists() and kept.is_dir()
        foreign = tmp_path / f"llmq-scratch.gguf.1-0-{'0' * 6 if owners.host_id() != '0' * 6 else '1' * 6}-abcdefgh"
        foreign.mkdir()  # another host's: never judged from here
        other = tmp_path / "llmq-gguf-unrelated"
        other.mkdir()
        with owners.scratch_dir("gguf-view", tmp_path) as mine:
            assert mine.is_dir() and kept.is_dir() and foreign.is_dir() and other.is_dir()
        assert not mine.exists()
    finally:
        live.kill()
        live.wait()
    assert owners.clean_scratch(tmp_path) == [kept]


def test_scratch_purpose_is_checked():
    with pytest.raises(ValueError):
        owners.make_scratch("../x")


def test_remove_entry_unlinks_links_without_following(tmp_path):
    target = tmp_path / "t"
    target.mkdir()
    (target / "f").write_text("x")
    link = tmp_path / "l"
    link.symlink_to(target)
    assert owners.remove_entry(link) and (target / "f").exists() and not os.path.lexists(link)
    assert owners.remove_entry(target) and not target.exists()
    assert owners.remove_entry(tmp_path / "missing")
