"""The GGUF dequantization cache: written from the file alone, keyed by what shapes it, never holding
code, shared safely by concurrent processes. Tiny GGUFs written with ``gguf.GGUFWriter`` (a second)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from llmq import gguf_cache as GC
from llmq.errors import RemoteCodeError
from llmq.models import resolve_model

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def tiny_gguf(tmp_path_factory) -> Path:
    from llmq.testing_gguf import write_tiny_gguf

    return write_tiny_gguf(tmp_path_factory.mktemp("gguf") / "clean" / "m.gguf")


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("LLMQ_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache" / "gguf"


def _code_files(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.rglob("*.py"))


def _plant_code(folder: Path, marker: Path) -> None:
    (folder / "tokenizer_config.json").write_text(json.dumps(
        {"auto_map": {"AutoTokenizer": ["tokenization_evil.EvilTokenizer", None]}, "tokenizer_class": "EvilTokenizer"}))
    (folder / "tokenization_evil.py").write_text(
        f"open({str(marker)!r}, 'w').write('ran')\n"
        "from transformers import PreTrainedTokenizerFast\n\n\nclass EvilTokenizer(PreTrainedTokenizerFast):\n    pass\n")


def test_gguf_beside_custom_code_is_refused_and_never_reaches_the_cache(tiny_gguf, tmp_path, cache):
    """Before: transformers read the ``tokenizer_config.json`` beside a ``.gguf``, asked to run its code
    (a pipe answered yes), and the cache entry, keyed by the file's bytes alone, kept the code for a
    byte-identical clean copy elsewhere. Now: refused without --trust-remote-code; with it, the file
    is read alone (the code never runs) and the shared entry holds no code."""
    evil = tmp_path / "evil" / "m.gguf"
    evil.parent.mkdir()
    shutil.copyfile(tiny_gguf, evil)
    marker = tmp_path / "EVIL_RAN"
    _plant_code(evil.parent, marker)
    with pytest.raises(RemoteCodeError, match="tokenizer_config.json has auto_map.*--trust-remote-code"):
        resolve_model(str(evil))
    with pytest.raises(RemoteCodeError):
        resolve_model(str(evil.parent))  # a folder holding the .gguf: the same guard
    trusted = resolve_model(str(evil), trust_remote_code=True)
    assert trusted.tokenizer().__class__.__name__ != "EvilTokenizer" and trusted.config().hidden_size == 64
    entry = trusted.local_dir()
    assert not marker.exists() and _code_files(entry) == []
    assert "auto_map" not in (entry / "tokenizer_config.json").read_text()
    clean = resolve_model(str(tiny_gguf))
    assert clean.local_dir() == entry and not marker.exists()  # same bytes, same entry: nothing foreign in it
    assert [p.name for p in cache.iterdir()] == [entry.name]


def test_cache_key_covers_everything_that_shapes_the_entry(tiny_gguf, cache, monkeypatch):
    base = GC.gguf_cache(tiny_gguf)
    assert base.parent == cache and base.name.startswith("m-")
    monkeypatch.setattr(GC, "GGUF_CACHE_FORMAT", GC.GGUF_CACHE_FORMAT + 1)
    assert GC.gguf_cache(tiny_gguf) != base
    monkeypatch.undo()
    monkeypatch.setenv("LLMQ_CACHE", str(cache.parent))
    monkeypatch.setattr(GC, "_dequantizer_versions", lambda: "transformers=0.0,gguf=0.0")
    assert GC.gguf_cache(tiny_gguf) != base


def test_a_cache_entry_holding_code_is_refused(tiny_gguf, tmp_path, cache):
    entry = resolve_model(str(tiny_gguf)).local_dir()
    marker = tmp_path / "RAN"
    _plant_code(entry, marker)
    with pytest.raises(RemoteCodeError, match="cache entry .* holds code.*delete that folder"):
        resolve_model(str(tiny_gguf)).config()
    with pytest.raises(RemoteCodeError):
        resolve_model(str(tiny_gguf), trust_remote_code=True).local_dir()  # the flag does not open the cache
    assert not marker.exists()


def test_a_second_process_waits_for_the_cache_writer_and_uses_its_result(tiny_gguf, cache, tmp_path):
    """Before: the second process failed with OutputLockedError. Now it says it waits, then uses the
    entry the first wrote (it does not dequantize again)."""
    import time

    env = {**os.environ, "PYTHONPATH": str(ROOT), "LLMQ_CACHE": str(cache.parent)}
    release = tmp_path / "release"
    holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import time, transformers
        from pathlib import Path
        from llmq.gguf_cache import _dequantize_gguf, gguf_cache
        from llmq.outdir import reserve_output
        p = Path({str(tiny_gguf)!r})
        with reserve_output(gguf_cache(p), overwrite=True):
            print("locked", flush=True)
            while not Path({str(release)!r}).exists():
                time.sleep(0.05)
            _dequantize_gguf(p)
        """)], stdout=subprocess.PIPE, text=True, env=env)
    log = tmp_path / "waiter.err"
    try:
        assert holder.stdout.readline().strip() == "locked"
        with open(log, "w") as err:
            waiter = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
                import transformers
                from llmq.models import resolve_model
                def no(*a, **k):
                    raise AssertionError("dequantized a second time")
                transformers.AutoModelForCausalLM.from_pretrained = no
                print(resolve_model({str(tiny_gguf)!r}).local_dir())
                """)], stdout=subprocess.PIPE, stderr=err, text=True, env=env)
            deadline = time.time() + 120
            while "waiting up to" not in log.read_text() and time.time() < deadline and waiter.poll() is None:
                time.sleep(0.05)
            release.touch()
            out, _ = waiter.communicate(timeout=120)
        msg = log.read_text()
        assert waiter.returncode == 0, msg[-2000:]
        assert f"pid {holder.pid}" in msg and "waiting up to" in msg
        entry = Path(out.strip().splitlines()[-1])
        assert entry == GC.gguf_cache(tiny_gguf) and (entry / "config.json").is_file()
        assert holder.wait(timeout=120) == 0
    finally:
        holder.kill()
        holder.wait()
    assert sorted(p.name for p in cache.iterdir()) == [entry.name]  # no lock or temp folder left


def test_gguf_view_holds_only_the_file(tiny_gguf):
    with GC.gguf_view(tiny_gguf) as (d, name):
        assert [p.name for p in d.iterdir()] == [name] and (d / name).resolve() == tiny_gguf.resolve()
    assert not d.exists()
