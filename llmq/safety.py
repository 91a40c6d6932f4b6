"""Input guards that turn dangerous or meaningless input into one-line errors before work starts.

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

from llmq.errors import CalibrationError, ConfigError, CorruptModelError, RemoteCodeError

#: Python files transformers imports for ``auto_map`` models
_CODE_GLOBS = ("modeling_*.py", "configuration_*.py", "tokenization_*.py", "processing_*.py", "image_processing_*.py")


# -- foreign code -----------------------------------------------------------------------------------
def remote_code_reason(path: str | os.PathLike) -> str | None:
    """Why ``path`` (a local model folder) would run its own Python under transformers, or None.
    ``auto_map`` in config.json / tokenizer_config.json is what makes transformers import it."""
    path = Path(path)
    reasons = []
    for name in ("config.json", "tokenizer_config.json", "preprocessor_config.json"):
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


def refuse_remote_code(path: str | os.PathLike, trust_remote_code: bool) -> None:
    """Raise unless the folder carries no custom code or the user opted in. Called on every local
    model path before any transformers ``from_pretrained`` (which would otherwise prompt or import)."""
    if trust_remote_code:
        return
    reason = remote_code_reason(path)
    if reason:
        raise RemoteCodeError(
            f"{path} contains custom model code ({reason}); llmq does not run it unless you pass "
            "--trust-remote-code (trust_remote_code=True) after reading that code.")


# -- safetensors files ------------------------------------------------------------------------------
def safetensors_header(path: str | os.PathLike) -> dict:
    """The JSON header of a safetensors file, after checking that the file is complete (every
    tensor's byte range inside the file). Reads the header only."""
    path = Path(path)
    size = path.stat().st_size
    bad = f"{path} is not a valid safetensors file"
    if size < 8:
        raise CorruptModelError(f"{bad}: it is {size} bytes (truncated or empty); re-download or re-save it.")
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        if n == 0 or 8 + n > size or n > 100 << 20:
            raise CorruptModelError(f"{bad}: its header length ({n}) does not fit the file ({size} bytes).")
        raw = f.read(n)
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        raise CorruptModelError(f"{bad}: its header is not JSON (garbage or a different format).") from None
    if not isinstance(header, dict):
        raise CorruptModelError(f"{bad}: its header is not a JSON object.")
    end = 0
    for name, info in header.items():
        if name == "__metadata__":
            continue
        try:
            lo, hi = info["data_offsets"]
        except (TypeError, KeyError, ValueError):
            raise CorruptModelError(f"{bad}: tensor {name!r} has no data_offsets.") from None
        end = max(end, int(hi))
    if 8 + n + end > size:
        raise CorruptModelError(f"{bad}: it is truncated ({size} bytes, the header needs {8 + n + end}).")
    return header


def check_safetensors_folder(path: str | os.PathLike) -> list[str]:
    """Validate every ``*.safetensors`` in a model folder (headers and lengths, no tensor reads) and
    the shard index if there is one; return the tensor names."""
    path = Path(path)
    files = sorted(path.glob("*.safetensors"))
    names: list[str] = []
    for f in files:
        names += [k for k in safetensors_header(f) if k != "__metadata__"]
    index = path / "model.safetensors.index.json"
    if index.is_file():
        try:
            wm = json.loads(index.read_text())["weight_map"]
        except (ValueError, KeyError, TypeError):
            raise CorruptModelError(f"{index} is not a valid shard index (no weight_map).") from None
        missing = sorted({v for v in wm.values() if not (path / v).is_file()})
        if missing:
            raise CorruptModelError(f"{index} names shards that are missing: {', '.join(missing[:3])}.")
    return names


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


# -- weights the checkpoint does not have -----------------------------------------------------------
def missing_weights(expected: Iterable[str], present: Iterable[str], base_prefix: str = "") -> list[str]:
    """Parameters a model class expects that a checkpoint lacks (transformers would initialise them
    randomly). ``base_prefix`` (e.g. ``"bert"``) lets a headless checkpoint match ``bert.*`` names."""
    present = set(present)
    out = []
    for k in expected:
        if k in present:
            continue
        if base_prefix and k.startswith(base_prefix + ".") and k[len(base_prefix) + 1:] in present:
            continue
        if base_prefix and f"{base_prefix}.{k}" in present:
            continue
        out.append(k)
    return out


def check_loading_info(info: Mapping[str, Any], what: str) -> None:
    """After ``from_pretrained(..., output_loading_info=True)``: refuse newly initialised weights."""
    missing = sorted(info.get("missing_keys") or [])
    mismatched = info.get("mismatched_keys") or []
    if missing or mismatched:
        names = missing or [str(m[0]) if isinstance(m, (tuple, list)) else str(m) for m in mismatched]
        raise CorruptModelError(f"{what}: transformers newly initialised {', '.join(names[:3])}"
                                f"{' ...' if len(names) > 3 else ''}; these weights are not in the checkpoint.")


# -- calibration text -------------------------------------------------------------------------------
def check_text(text: str, source: str, min_printable: float = 0.9) -> None:
    """Random bytes decode (with replacement) into mostly control and replacement characters; real
    text in any language is mostly printable. Checks the first 64 KB."""
    sample = text[:65536]
    if not sample.strip():
        raise CalibrationError(f"{source} holds no text.")
    ok = sum(1 for c in sample if (c.isprintable() or c in "\n\r\t") and c != "\ufffd")
    share = ok / len(sample)
    if share < min_printable:
        raise CalibrationError(
            f"{source} does not look like text ({100 * (1 - share):.0f}% of its characters are control bytes or "
            "invalid UTF-8); calibrate on real text (.txt in UTF-8, .jsonl with a text field, or .parquet).")


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


def check_model_output(model: Any, tokenizer: Any, what: str, text: str = "The quick brown fox jumps over") -> None:
    """One short forward pass before scoring: NaN/Inf weights show up as non-finite logits, and a
    model that produces them must fail rather than report perplexity ``nan`` and argmax-0 accuracy."""
    import torch

    enc = tokenizer(text, return_tensors="pt")
    dev = next(model.parameters()).device
    with torch.inference_mode():
        logits = model(input_ids=enc["input_ids"].to(dev)).logits
    check_finite_logits(logits, what)


