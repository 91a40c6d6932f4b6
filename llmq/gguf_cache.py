"""The GGUF dequantization cache: a ``.gguf`` is dequantized once into a safetensors folder under
``$LLMQ_CACHE/gguf`` that every backend can load.

An entry is keyed by everything that shapes its content (the file's bytes, the versions of the code
that dequantizes it, llmq's cache format) and is written from the file alone: transformers is
pointed at a private view holding only the ``.gguf`` (``gguf_view``), never at the folder around it,
so no ``tokenizer_config.json`` beside the file can make it import Python, and no entry holds code
(an entry that does is refused). Entries are written through ``llmq.outdir`` (temp folder, lock,
rename); a second process asking for an entry being written waits for it.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any

from llmq.errors import RemoteCodeError

log = logging.getLogger(__name__)


def cache_dir() -> Path:
    return Path(os.environ.get("LLMQ_CACHE", Path.home() / ".cache" / "llmq"))


#: each cache entry records the GGUF files it came from, so entries whose sources are gone can be pruned
SOURCES_FILE = ".llmq-sources.json"
#: bumped whenever llmq changes what it writes into a cache entry (part of the key)
GGUF_CACHE_FORMAT = 2


@functools.lru_cache(maxsize=32)
def file_sha256(resolved: str, size: int, mtime_ns: int) -> str:
    """The file's SHA-256 (~0.1 s per 100 MB; memoised per path, size and mtime)."""
    h = hashlib.sha256()
    with open(resolved, "rb") as f:
        while chunk := f.read(1 << 22):
            h.update(chunk)
    return h.hexdigest()


def _stat_record(path: Path) -> dict[str, Any]:
    st = path.stat()
    return {"path": str(path.resolve()), "size": st.st_size, "mtime_ns": st.st_mtime_ns}


def _dequantizer_versions() -> str:
    from importlib.metadata import PackageNotFoundError, version

    out = []
    for dist in ("transformers", "gguf"):
        try:
            out.append(f"{dist}={version(dist)}")
        except PackageNotFoundError:
            out.append(f"{dist}=none")
    return ",".join(out)


def gguf_cache(path: Path) -> Path:
    """Where a GGUF file's dequantized folder lives, keyed by everything that shapes its content: the
    file's bytes, the versions of the code that dequantizes it, and llmq's cache format. Files beside
    the ``.gguf`` do not shape it (``gguf_view``: transformers reads the file alone), so the same file
    installed in many places (one per virtual environment) shares one entry, and no entry holds code."""
    rec = _stat_record(path)
    content = file_sha256(rec["path"], rec["size"], rec["mtime_ns"])
    key = hashlib.sha256(f"{content}|{_dequantizer_versions()}|format={GGUF_CACHE_FORMAT}".encode()).hexdigest()
    return cache_dir() / "gguf" / f"{path.stem}-{key[:12]}"


@contextlib.contextmanager
def gguf_view(path: Path):
    """``(folder, name)`` for transformers' ``from_pretrained(folder, gguf_file=name)``: a private
    scratch folder holding only a link to the ``.gguf``, so transformers reads the config and tokenizer
    from the file alone. Given the file's own folder it also reads a ``tokenizer_config.json`` beside
    it, whose ``auto_map`` makes it prompt for, and import, that folder's Python."""
    from llmq.owners import scratch_dir

    with scratch_dir("gguf-view") as d:
        try:
            (d / path.name).symlink_to(path.resolve())
        except OSError:  # no symlinks here: a copy (slow, correct)
            shutil.copyfile(path, d / path.name)
        yield d, path.name


def _cached_gguf_dir(path: Path) -> Path | None:
    """The complete cache entry of ``path``, or None. An entry holding code is refused: llmq never
    writes code into its cache, so someone else put it there."""
    out = gguf_cache(path)
    if not ((out / "config.json").is_file() and list(out.glob("*.safetensors"))):
        return None
    from llmq import safety

    reason = safety.remote_code_reason(out)
    if reason:
        raise RemoteCodeError(f"The GGUF cache entry {out} holds code ({reason}); llmq never writes code into "
                              "its cache, so it did not come from llmq: delete that folder.")
    _record_source(out, path)
    return out


def _read_sources(entry: Path) -> list[dict[str, Any]] | None:
    try:
        data = json.loads((entry / SOURCES_FILE).read_text(encoding="utf-8"))
        return [r for r in data if isinstance(r, dict)] if isinstance(data, list) else None
    except (OSError, ValueError):
        return None


def _record_source(entry: Path, path: Path) -> None:
    """Add ``path`` to the entry's sources (best effort: a read-only cache still serves)."""
    from llmq.io import write_json

    rec = _stat_record(path)
    sources = _read_sources(entry) or []
    if rec in sources:
        return
    try:
        write_json(entry / SOURCES_FILE, [r for r in sources if r.get("path") != rec["path"]] + [rec])
    except OSError:
        pass


def _source_alive(rec: dict[str, Any]) -> bool:
    try:
        st = os.stat(rec["path"])
    except (OSError, KeyError, TypeError):
        return False
    return st.st_size == rec.get("size") and st.st_mtime_ns == rec.get("mtime_ns")


def prune_gguf_cache(keep: Path, stem: str) -> list[Path]:
    """Delete dequantized folders none of whose source GGUF files still exist unchanged (each is as
    large as the fp16/fp32 model; without this, every reinstall or edited file leaves one behind), and
    folders from before sources were recorded that share ``stem``. Returns what was removed."""
    root = cache_dir() / "gguf"
    removed = []
    for entry in sorted(root.iterdir()) if root.is_dir() else ():
        if entry == keep or not entry.is_dir() or entry.name.startswith(".") or not (entry / "config.json").is_file():
            continue  # in-progress (".NAME.*.incomplete") and foreign folders are left alone
        sources = _read_sources(entry)
        stale = (not any(_source_alive(r) for r in sources)) if sources is not None else entry.name.rsplit("-", 1)[0] == stem
        if stale:
            shutil.rmtree(entry, ignore_errors=True)
            removed.append(entry)
    return removed


#: how long a second process waits for another one writing the same cache entry (seconds)
CACHE_WAIT_S = float(os.environ.get("LLMQ_CACHE_WAIT_S", 3600))


def _dequantize_gguf(path: Path) -> Path:
    """Dequantize once into ``$LLMQ_CACHE/gguf/<stem>-<key>`` (temp folder, then rename), pruning
    entries whose GGUF files are gone. A second process asking for the same entry waits for the
    first (up to ``CACHE_WAIT_S``, saying so) and then uses its result."""
    import sys

    out = gguf_cache(path)
    if _cached_gguf_dir(path):
        return out
    from llmq.outdir import atomic_output, reserve_output

    def note(msg: str) -> None:
        print(f"llmq: note: {msg}", file=sys.stderr, flush=True)

    with reserve_output(out, overwrite=True, wait=CACHE_WAIT_S, note=note):
        if _cached_gguf_dir(path):  # the process we waited for wrote it
            return out
        from transformers import AutoModelForCausalLM

        with gguf_view(path) as (d, name):
            model = AutoModelForCausalLM.from_pretrained(d, gguf_file=name, dtype="auto", trust_remote_code=False)
        tok = gguf_tokenizer(path)
        strip_quantization_config(model)
        with atomic_output(out, overwrite=True, track=False) as tmp:
            model.save_pretrained(tmp, safe_serialization=True)
            tok.save_pretrained(tmp)
            _record_source(tmp, path)
    for gone in prune_gguf_cache(out, path.stem):
        log.info("removed %s: its GGUF file is gone or changed", gone)
    return out


def strip_quantization_config(model: Any) -> None:
    """GGUF-loaded models carry a ``quantization_config`` that would make ``save_pretrained`` write a
    folder transformers then tries to load as GGUF."""
    cfg = model.config
    if hasattr(cfg, "quantization_config"):
        del cfg.quantization_config
    if hasattr(model, "hf_quantizer"):
        model.hf_quantizer = None
    if hasattr(model, "is_quantized"):
        try:
            model.is_quantized = False
        except AttributeError:
            pass


#: transformers' class for a SentencePiece vocabulary (``tokenizer.ggml.model`` "llama") per GGUF
#: architecture: the class the original model's tokenizer had (checked: a reload tokenizes as the file
#: does). Other files stay with transformers' generic ``TokenizersBackend``, which keeps the
#: pre-tokenizer the file implies (a byte-level class would replace it with its own).
GGUF_SENTENCEPIECE_CLASS = {"llama": "LlamaTokenizer"}


def gguf_tokenizer(path: Path) -> Any:
    """The tokenizer a GGUF file stores, as transformers reads it, in the class its vocabulary has
    (``LlamaTokenizer`` for a Llama SentencePiece vocabulary), so that a dequantized folder, and a
    folder quantized from it, names that class in ``tokenizer_config.json``."""
    import transformers
    from transformers import AutoTokenizer

    cls = None
    try:  # transformers' own header reader (a tenth of a second; gguf-py's reads every array)
        from transformers.integrations.gguf import read_gguf_metadata

        meta, _ = read_gguf_metadata(str(path))
    except (ImportError, ValueError, OSError):
        meta = {}
    if meta.get("tokenizer.ggml.model") == "llama":
        cls = getattr(transformers, GGUF_SENTENCEPIECE_CLASS.get(meta.get("general.architecture"), ""), None)
    with gguf_view(path) as (d, name):  # the file alone: nothing beside it is read
        return (cls or AutoTokenizer).from_pretrained(d, gguf_file=name, trust_remote_code=False)
