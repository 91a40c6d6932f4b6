"""Input guards that turn dangerous or meaningless input into one-line errors before work starts
(the checks that read only file headers are ``llmq.weightfiles``).

Each guard is a plain function with no llmq state, so a scheme plugin or a loader calls it at the
point where the fact is known (config read, headers read, tensors produced). Torch is imported only
by the guards that inspect tensors.
"""

from __future__ import annotations

import difflib
import fnmatch
import json
import os
import struct
from pathlib import Path
from typing import Any, Iterable, Mapping

from llmq.errors import ConfigError, CorruptModelError, DataError, RemoteCodeError
from llmq.weightfiles import safetensors_header

#: Python files transformers imports for ``auto_map`` models
_CODE_GLOBS = ("modeling_*.py", "configuration_*.py", "tokenization_*.py", "processing_*.py", "image_processing_*.py")


# -- foreign code -----------------------------------------------------------------------------------
def code_folder(path: str | os.PathLike) -> Path:
    """The folder transformers would read beside ``path``: the path itself, or a file's folder (a
    ``.gguf``: transformers looks for ``tokenizer_config.json`` next to it)."""
    path = Path(path).expanduser()
    return path if path.is_dir() or not path.exists() else path.parent


def remote_code_reason(path: str | os.PathLike) -> str | None:
    """Why ``path`` (a local model folder, or a file in one) would run its own Python under
    transformers, or None. ``auto_map`` in config.json / tokenizer_config.json is what makes
    transformers import it; shipped ``modeling_*.py``-style files are refused too."""
    path = code_folder(path)
    reasons = []
    for name in ("config.json", "tokenizer_config.json", "preprocessor_config.json", "processor_config.json"):
        f = path / name
        if f.is_file():
            try:
                data = json.loads(f.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                continue
            if isinstance(data, dict) and data.get("auto_map"):
                reasons.append(f"{name} has auto_map")
    code = sorted({p.name for g in _CODE_GLOBS for p in path.glob(g)})
    if code:
        reasons.append("it ships " + ", ".join(code[:3]) + (" ..." if len(code) > 3 else ""))
    return "; ".join(reasons) or None


def refuse_remote_code(path: str | os.PathLike, trust_remote_code: bool, what: str | None = None) -> None:
    """The one foreign-code guard: raise unless the folder (a file's folder for a ``.gguf``) carries
    no custom code or the user opted in. Every source kind passes it before transformers reads it
    (``llmq.models``: a folder, a ``.gguf``'s folder, a Hub repo's configs; ``llmq.core.load``)."""
    if trust_remote_code:
        return
    reason = remote_code_reason(path)
    if reason:
        raise RemoteCodeError(
            f"{what or path} contains custom model code ({reason}); llmq does not run it unless you pass "
            "--trust-remote-code (trust_remote_code=True) after reading that code.")


# -- non-finite values ------------------------------------------------------------------------------
def nonfinite_tensors(tensors: Iterable[tuple[str, Any]], limit: int = 3) -> list[str]:
    """Names of floating tensors holding NaN or Inf (at most ``limit``); integer tensors are skipped.
    One fused reduction per tensor: about a memory pass, much cheaper than the quantization itself."""
    import torch

    bad = []
    for name, t in tensors:
        if not isinstance(t, torch.Tensor) or not t.is_floating_point() or t.numel() == 0:
            continue
        if type(t) is not torch.Tensor and not isinstance(t, torch.nn.Parameter):
            continue  # tensor subclasses (torchao, bnb) are checked through their saved components
        if t.element_size() == 1:  # FP8 (torch has no isfinite for it): NaN survives the upcast
            t = t.to(torch.float16)
        if not bool(torch.isfinite(t).all()):
            bad.append(name)
            if len(bad) >= limit:
                break
    return bad


def check_finite(tensors: Mapping[str, Any] | Iterable[tuple[str, Any]], what: str) -> None:
    """Raise naming the first non-finite tensors of ``what`` (a state dict or named tensors)."""
    items = tensors.items() if isinstance(tensors, Mapping) else tensors
    bad = nonfinite_tensors(items)
    if bad:
        raise CorruptModelError(f"{what} has NaN or Inf values in {', '.join(bad)}; nothing was saved.")


def check_finite_model(model: Any, what: str) -> None:
    """Parameters and buffers of a loaded module (before quantizing: the source weights)."""
    check_finite(list(model.named_parameters()) + list(model.named_buffers()), what)


#: safetensors float dtypes -> (unsigned view, exponent mask): a value is NaN or Inf exactly when all
#: its exponent bits are set, so the check is one integer pass over the memory-mapped bytes
_EXP_MASKS = {"F64": ("<u8", 0x7FF0000000000000), "F32": ("<u4", 0x7F800000), "F16": ("<u2", 0x7C00),
              "BF16": ("<u2", 0x7F80)}


def _nonfinite_in_file(f: Path, limit: int = 3, chunk: int = 1 << 24) -> list[str]:
    """Names of floating tensors in one safetensors file holding NaN/Inf, read through a memory map
    (no tensor copies, no torch). Float8 tensors go through torch; integer tensors are skipped."""
    import numpy as np

    header = safetensors_header(f)
    with open(f, "rb") as fh:
        (n,) = struct.unpack("<Q", fh.read(8))
    mm = np.memmap(f, dtype=np.uint8, mode="r")
    bad: list[str] = []
    try:
        for name, info in header.items():
            if name == "__metadata__":
                continue
            dt = str(info.get("dtype", ""))
            lo, hi = (8 + n + int(x) for x in info["data_offsets"])
            if dt in _EXP_MASKS:
                view, mask = _EXP_MASKS[dt]
                arr = mm[lo:hi].view(view)
                m = np.array(mask, dtype=view)
                if any(bool(np.any((arr[i:i + chunk] & m) == m)) for i in range(0, arr.size, chunk)):
                    bad.append(name)
            elif dt.startswith("F8"):
                from safetensors import safe_open

                with safe_open(str(f), framework="pt") as st:
                    bad += nonfinite_tensors([(name, st.get_tensor(name))], limit=1)
            if len(bad) >= limit:
                break
    finally:
        del mm
    return bad


def check_finite_safetensors(path: str | os.PathLike, what: str | None = None) -> None:
    """Every floating tensor of every ``*.safetensors`` in a folder (the source before quantizing; the
    saved output before it is renamed into place: catches fp16 scales that overflowed to inf)."""
    path = Path(path)
    for f in sorted(path.glob("*.safetensors")) if path.is_dir() else [path]:
        bad = _nonfinite_in_file(f)
        if bad:
            raise CorruptModelError(f"{what or f} has NaN or Inf values in {', '.join(bad)}.")


def check_finite_logits(logits: Any, what: str) -> None:
    """Evaluation must not score NaN logits (argmax of NaN is 0: a fake accuracy)."""
    import torch

    if not bool(torch.isfinite(logits).all()):
        raise CorruptModelError(f"{what} produced NaN or Inf logits; its weights are broken, so it is not scored.")


# -- text data (calibration, perplexity, task files) -------------------------------------------------
def check_text(text: str, source: str, min_printable: float = 0.9) -> None:
    """Random bytes decode (with replacement) into mostly control and replacement characters; real
    text in any language is mostly printable. Checks the first 64 KB. The one check for every text
    llmq reads: calibration and training data, perplexity text, task files."""
    sample = text[:65536]
    if not sample.strip():
        raise DataError(f"{source} holds no text.")
    ok = sum(1 for c in sample if (c.isprintable() or c in "\n\r\t") and c != "\ufffd")
    share = ok / len(sample)
    if share < min_printable:
        raise DataError(
            f"{source} does not look like text ({100 * (1 - share):.0f}% of its characters are control bytes or "
            "invalid UTF-8); pass UTF-8 text (.txt, or .jsonl with text fields).")


def check_text_file(path: str | os.PathLike) -> None:
    path = Path(path)
    with open(path, "rb") as f:
        raw = f.read(65536)
    check_text(raw.decode("utf-8", errors="replace"), str(path))


# -- skip modules -----------------------------------------------------------------------------------
def _matches(name: str, p: str) -> bool:
    """The same rule as ``llmq.models.excluded_modules``."""
    return name == p or fnmatch.fnmatch(name, p) or name.split(".")[-1] == p or name.endswith("." + p)


def check_skip_modules(patterns: Iterable[str], module_names: Iterable[str]) -> None:
    """Every ``--skip-modules`` entry must match at least one module; an unmatched one is a typo
    that would silently quantize what the user meant to keep."""
    names = list(module_names)
    short = sorted({n.split(".")[-1] for n in names})
    for p in patterns:
        if any(_matches(n, p) for n in names):
            continue
        near = difflib.get_close_matches(p, short + names, n=4, cutoff=0.4) or short[:6]
        raise ConfigError(f"--skip-modules {p!r} matches no module of this model; near names: {', '.join(near)}.")


# -- option values ----------------------------------------------------------------------------------
def check_field_types(config_cls: type, overrides: Mapping[str, Any]) -> None:
    """``--set key=value`` values must have the field's type (``damp_percent=abc`` is a user error,
    not a TypeError deep inside a backend). Uses the dataclass field annotations."""
    import dataclasses
    import typing

    try:
        hints = typing.get_type_hints(config_cls)
    except Exception:  # noqa: BLE001 - unresolvable annotations: skip the check
        return
    fields = {f.name for f in dataclasses.fields(config_cls)}
    for key, value in overrides.items():
        if key not in fields or value is None:
            continue
        t = hints.get(key)
        ok = _type_ok(t, value)
        if ok is False:
            raise ConfigError(f"{key}={value!r} is invalid: expected {_type_name(t)}.")


def _type_ok(t: Any, value: Any) -> bool | None:
    import typing

    origin = typing.get_origin(t)
    if t is bool:
        return isinstance(value, bool)
    if t is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if t is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if t is str:
        return isinstance(value, str)
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        results = [_type_ok(a, value) for a in typing.get_args(t) if a is not type(None)]
        return True if any(r is not False for r in results) else False
    if origin is tuple or t is tuple:
        return isinstance(value, (list, tuple, str))
    return None  # unknown annotation: not judged


def _type_name(t: Any) -> str:
    return getattr(t, "__name__", str(t).replace("typing.", ""))


def check_device(device: str | None) -> None:
    """cpu, cuda, cuda:N, mps, xpu (torch device strings llmq's backends accept) or None (auto)."""
    if device is None:
        return
    base, _, idx = str(device).partition(":")
    if base not in ("cpu", "cuda", "mps", "xpu") or (idx and not idx.isdigit()):
        raise ConfigError(f"--device {device!r} is not supported; use cpu or cuda (cuda:N for one GPU).")


def check_eval_options(*, seqlen: Any = None, stride: Any = None, batch_size: Any = None,
                       limit: Any = None) -> None:
    """Zero or negative values are errors, never silently replaced by defaults."""
    for name, v in (("seqlen", seqlen), ("stride", stride), ("batch-size", batch_size), ("limit", limit)):
        if v is not None and (not isinstance(v, int) or isinstance(v, bool) or v < 1):
            raise ConfigError(f"--{name} must be a positive integer, got {v!r}.")
    if seqlen is not None and stride is not None and stride > seqlen:
        raise ConfigError(f"--stride ({stride}) must not exceed --seqlen ({seqlen}).")


def check_report_dir(path: str | os.PathLike | None) -> None:
    """``eval -o``: a folder (created if missing), not an existing file."""
    if path is None:
        return
    p = Path(path).expanduser()
    if p.exists() and not p.is_dir():
        raise ConfigError(f"--output {p} exists and is a file; eval writes report files into a folder.")
    from llmq.outdir import check_writable

    check_writable(p)


def vocab_rows(model_or_config: Any) -> int | None:
    """How many token ids a model's embedding table holds (its loaded table, else ``vocab_size``)."""
    get = getattr(model_or_config, "get_input_embeddings", None)
    emb = get() if callable(get) else None
    if emb is not None and getattr(emb, "num_embeddings", None):
        return int(emb.num_embeddings)
    cfg = getattr(model_or_config, "config", model_or_config)
    text = cfg.get_text_config() if hasattr(cfg, "get_text_config") else cfg
    v = getattr(text, "vocab_size", None)
    return int(v) if isinstance(v, int) and v > 0 else None


def check_vocab(tokenizer: Any, model_or_config: Any, what: str) -> None:
    """Every id the tokenizer can produce must index the embedding table: a tokenizer larger than
    the model's vocabulary turns some text into an IndexError deep in a forward pass (or a read past
    the table in a kernel)."""
    rows = vocab_rows(model_or_config)
    try:
        n = max(tokenizer.get_vocab().values()) + 1
    except (AttributeError, TypeError, ValueError):
        n = len(tokenizer)
    if rows is not None and n > rows:
        raise CorruptModelError(
            f"{what}: its tokenizer has {n} token ids but the embedding table holds {rows} (vocab_size); text "
            f"with ids {rows}..{n - 1} cannot be run. The tokenizer does not belong to these weights.")


def check_model_output(model: Any, tokenizer: Any, what: str, text: str = "The quick brown fox jumps over") -> None:
    """Before scoring: the tokenizer fits the embeddings (``check_vocab``), and one short forward
    pass: NaN/Inf weights show up as non-finite logits, and a model that produces them must fail
    rather than report perplexity ``nan`` and argmax-0 accuracy."""
    import torch

    check_vocab(tokenizer, model, what)
    enc = tokenizer(text, return_tensors="pt")
    dev = next(model.parameters()).device
    with torch.inference_mode():
        logits = model(input_ids=enc["input_ids"].to(dev)).logits
    check_finite_logits(logits, what)


