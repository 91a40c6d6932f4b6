"""What a model costs to keep and run: size on disk, parameter memory, peak process memory, load time,
prefill and decode speed (batch 1, fixed prompt and length, warm-up excluded)."""

from __future__ import annotations

import resource
import sys
import time
from pathlib import Path
from typing import Any

PREFILL_TOKENS = 128
DECODE_TOKENS = 32
REPEATS = 3


def size_on_disk(path: str | Path | None) -> int | None:
    """Bytes of the weight files in a model folder: those its plugin names (``*.safetensors`` for
    transformers folders), else ``*.bin`` / ``*.pt`` / ``*.gguf``."""
    if path is None:
        return None
    from llmq.models import folder_size
    from llmq.schemes import plugin_of_folder

    p = Path(path)
    n = folder_size(p, plugin_of_folder(p).weight_patterns) if p.exists() else 0
    return n if n else folder_size(p, ("*.bin", "*.pt", "*.gguf")) or None


def param_memory(model: Any) -> int:
    """Bytes held by parameters and buffers as stored (packed 4-bit weights count as packed)."""
    seen, total = set(), 0
    for t in list(model.parameters()) + list(model.buffers()):
        key = (t.data_ptr(), t.nbytes) if t.device.type != "meta" else id(t)
        if key in seen:
            continue
        seen.add(key)
        total += t.numel() * t.element_size()
    return total


class PeakRSS:
    """Peak resident memory of this process over a block. On Linux the kernel's high-water mark is
    reset first (``/proc/self/clear_refs``), so the peak is this block's; elsewhere it is the
    process's peak so far (``getrusage``)."""

    def __enter__(self) -> "PeakRSS":
        self.resettable = _reset_hwm()
        self.peak = 0
        return self

    def __exit__(self, *exc: Any) -> None:
        self.peak = current_peak()


def _reset_hwm() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def current_peak() -> int:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return r if sys.platform == "darwin" else r * 1024


def speed(model: Any, tokenizer: Any, *, prefill_tokens: int = PREFILL_TOKENS, decode_tokens: int = DECODE_TOKENS,
          repeats: int = REPEATS) -> dict[str, float]:
    """Tokens/s at batch 1: prefill of a fixed ``prefill_tokens``-token prompt, then ``decode_tokens``
    greedy steps from its KV cache (end-of-text ignored). One warm-up run first; median of ``repeats``."""
    import statistics

    import torch

    from llmq.eval.loglik import model_device

    device = model_device(model)
    text = " ".join(["The quick brown fox jumps over the lazy dog."] * (prefill_tokens // 4 + 8))
    ids = tokenizer(text, add_special_tokens=False, return_tensors="pt").input_ids[:, :prefill_tokens].to(device)
    pre, dec = [], []
    with torch.inference_mode():
        for i in range(repeats + 1):
            _sync(device)
            t0 = time.perf_counter()
            out = model(input_ids=ids, use_cache=True)
            _sync(device)
            t1 = time.perf_counter()
            cache, tok = out.past_key_values, out.logits[:, -1:].argmax(-1)
            for _ in range(decode_tokens):
                out = model(input_ids=tok, past_key_values=cache, use_cache=True)
                cache, tok = out.past_key_values, out.logits[:, -1:].argmax(-1)
            _sync(device)
            t2 = time.perf_counter()
            if i:  # the first run is the warm-up
                pre.append(ids.shape[1] / (t1 - t0))
                dec.append(decode_tokens / (t2 - t1))
    return {"prefill_tokens_per_s": statistics.median(pre), "decode_tokens_per_s": statistics.median(dec),
            "protocol": f"batch 1, {ids.shape[1]}-token prompt, {decode_tokens} greedy decode steps, "
                        f"median of {repeats} after 1 warm-up"}


def _sync(device: Any) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)
