"""How big is this model, without downloading its weights.

The count comes from the cheapest source that is exact: a local folder's safetensors headers, the
Hub's safetensors metadata (``huggingface_hub.get_safetensors_metadata``), a GGUF file's tensor
table (``gguf.GGUFReader``, no dequantization), or the config alone on the meta device. The
layout (which tensors are Linear weights llmq would quantize, embeddings, ``lm_head``, KV-cache
dimensions) comes from the config on the meta device, or from GGUF tensor names.
"""

from __future__ import annotations

import json
import math
import struct
from pathlib import Path
from typing import Any

from llmq.errors import ConfigError, LlmqError, ModelNotFoundError
from llmq.sizing import Linear, ModelProfile

#: bytes per element of safetensors / torch dtypes
DTYPE_BYTES = {
    "F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1, "BOOL": 1,
    "F8_E4M3": 1, "F8_E5M2": 1,
    "float32": 4, "float16": 2, "bfloat16": 2, "float64": 8,
}


# -- parameter counting -------------------------------------------------------------------------
def safetensors_header(path: Path) -> dict[str, Any]:
    """The JSON header of a .safetensors file (8-byte little-endian length, then JSON): shapes and
    dtypes of every tensor, read without touching the data."""
    with open(path, "rb") as f:
        raw = f.read(8)
        if len(raw) != 8:
            raise ModelNotFoundError(f"{path} is not a safetensors file (too short).")
        (n,) = struct.unpack("<Q", raw)
        if n > 100 * 1024 * 1024:
            raise ModelNotFoundError(f"{path} is not a safetensors file (header of {n} bytes).")
        header = json.loads(f.read(n))
    header.pop("__metadata__", None)
    return header


def count_local(folder: Path) -> tuple[int, str]:
    """(parameters, checkpoint dtype) from the headers of every shard in ``folder``."""
    total, by_dtype = 0, {}
    files = sorted(Path(folder).glob("*.safetensors"))
    if not files:
        raise ModelNotFoundError(f"{folder} has no .safetensors files.")
    for f in files:
        for info in safetensors_header(f).values():
            n = math.prod(info["shape"])
            total += n
            by_dtype[info["dtype"]] = by_dtype.get(info["dtype"], 0) + n
    return total, _main_dtype(by_dtype)


def count_hub(repo_id: str, revision: str | None = None) -> tuple[int, str]:
    """(parameters, checkpoint dtype) from the Hub's safetensors metadata: a few KB of headers
    fetched by range request, never the weights."""
    from huggingface_hub import get_safetensors_metadata

    meta = get_safetensors_metadata(repo_id, revision=revision)
    counts = dict(meta.parameter_count)
    return sum(counts.values()), _main_dtype(counts)


def _main_dtype(by_dtype: dict[str, int]) -> str:
    if not by_dtype:
        return "float32"
    top = max(by_dtype, key=by_dtype.get)
    return {"F32": "float32", "F16": "float16", "BF16": "bfloat16"}.get(top, top.lower())


#: GGUF tensors that are not model parameters in transformers (precomputed RoPE tables)
_GGUF_NON_PARAMS = ("rope_freqs", "rope_factors_long", "rope_factors_short")


def gguf_profile(path: Path, name: str | None = None) -> ModelProfile:
    """Count and lay out a GGUF model from its tensor table: shapes only, nothing dequantized.
    GGUF stores a tied ``lm_head`` once (no ``output.weight``), as transformers counts it."""
    from gguf import GGUFReader

    reader = GGUFReader(str(path))
    total, linears, emb, head = 0, [], 0, 0
    for t in reader.tensors:
        if t.name.split(".")[0] in _GGUF_NON_PARAMS:
            continue
        n = int(t.n_elements)
        total += n
        shape = [int(s) for s in t.shape]  # GGUF order: ne0 = in_features first
        if t.name.startswith("token_embd") or t.name.startswith("position_embd"):
            emb += n
        elif t.name == "output.weight":
            head += n
        elif t.name.startswith("blk.") and t.name.endswith(".weight") and len(shape) == 2:
            linears.append(Linear(t.name, shape[0], shape[1], True))

    def field_value(key: str) -> Any:
        f = reader.fields.get(key)
        if f is None or not f.data:
            return None
        v = f.parts[f.data[0]]
        return v.tobytes().decode() if v.dtype.kind == "u" and key == "general.architecture" else v.tolist()[0]

    arch = field_value("general.architecture") or "llama"
    get = lambda k, d=0: field_value(f"{arch}.{k}") or d  # noqa: E731
    hidden, heads = int(get("embedding_length")), int(get("attention.head_count", 1))
    vocab = int(get("vocab_size")) or (emb // hidden if hidden else 0)
    return ModelProfile(
        name=name or path.name, parameters=total, source="gguf", linears=linears, embedding_params=emb,
        lm_head_params=head, tied=head == 0, layers=int(get("block_count")), hidden=hidden,
        kv_heads=int(get("attention.head_count_kv", heads)), head_dim=int(get("attention.key_length", 0)) or
        (hidden // heads if heads else 0), vocab=vocab, intermediate=int(get("feed_forward_length")),
        checkpoint_dtype="float32", layout_source="GGUF tensor names",
        notes=["GGUF weights are dequantized to float32 by llmq; sizes 'before' are for that float32 copy."],
    )


def config_profile(config: Any, name: str, *, trust_remote_code: bool = False) -> ModelProfile:
    """Layout and count from the config alone: the model is built on the meta device (accelerate's
    ``init_empty_weights``), so a 70B config costs seconds and no memory."""
    from torch import nn

    from llmq.models import count_parameters, meta_model

    model = meta_model(config, trust_remote_code=trust_remote_code)
    total = count_parameters(model)
    emb_w = model.get_input_embeddings().weight if model.get_input_embeddings() is not None else None
    out = model.get_output_embeddings()
    tied = out is not None and emb_w is not None and out.weight is emb_w
    emb = sum(m.weight.numel() for m in model.modules() if isinstance(m, nn.Embedding))
    head_name = next((n for n, m in model.named_modules() if m is out), "lm_head") if out is not None else None
    linears = []
    for n, m in model.named_modules():
        if isinstance(m, nn.Linear) and n != head_name and not (out is not None and m is out):
            linears.append(Linear(n, m.in_features, m.out_features, ".layers." in f".{n}"))
    head = 0 if (tied or out is None) else out.weight.numel()
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    heads = int(getattr(text, "num_attention_heads", 0) or 0)
    hidden = int(getattr(text, "hidden_size", 0) or 0)
    head_dim = int(getattr(text, "head_dim", 0) or 0) or (hidden // heads if heads else 0)
    dtype = getattr(config, "dtype", None) or getattr(config, "torch_dtype", None) or "float32"
    return ModelProfile(
        name=name, parameters=total, source="config", linears=linears, embedding_params=emb, lm_head_params=head,
        tied=tied, layers=int(getattr(text, "num_hidden_layers", 0) or 0), hidden=hidden,
        kv_heads=int(getattr(text, "num_key_value_heads", 0) or heads), head_dim=head_dim,
        vocab=int(getattr(text, "vocab_size", 0) or 0), intermediate=int(getattr(text, "intermediate_size", 0) or 0),
        checkpoint_dtype=str(dtype).replace("torch.", ""), config=config,
    )


def synthetic_profile(parameters: int, name: str | None = None, *, vocab: int = 32000) -> ModelProfile:
    """A Llama-shaped stand-in for a bare parameter count (``advise(7e9)``): width ``h`` a
    multiple of 256 with ``h/128`` layers, untied embeddings and 8 KV heads of 128 (grouped-query
    attention, as Llama 3 and Qwen 2.5 use at every size), so that
    ``12·L·h² + 2·V·h`` is closest to the count. Each layer's Linears are lumped into one of the
    same total size; only the KV-cache estimate depends on the assumed shape."""
    parameters = int(parameters)
    if parameters <= 0:
        raise ConfigError(f"parameter count must be positive, got {parameters!r}.")
    h = min(range(256, 32768 + 1, 256), key=lambda w: abs(12 * (w // 128) * w * w + 2 * vocab * w - parameters))
    layers = h // 128
    emb = min(vocab * h, parameters // 4)
    per_layer_out = max(1, (parameters - 2 * emb) // (layers * h))
    lins = [Linear(f"model.layers.{i}.linears", h, per_layer_out, True) for i in range(layers)]
    return ModelProfile(
        name=name or f"{human_count(parameters)} parameters", parameters=parameters, source="given", linears=lins,
        embedding_params=emb, lm_head_params=emb, tied=False, layers=layers, hidden=h, kv_heads=min(8, h // 128),
        head_dim=128, vocab=vocab, intermediate=int(round(8 * h / 3 / 256)) * 256,
        checkpoint_dtype="bfloat16", layout_source="assumed Llama-like shape (no config given)",
    )


def profile(model: Any, *, revision: str | None = None, trust_remote_code: bool = False) -> ModelProfile:
    """A ``ModelProfile`` for a Hub id, local folder, ``.gguf`` file, bare parameter count, or
    ``None`` (the offline demo model)."""
    if isinstance(model, ModelProfile):
        return model
    if isinstance(model, (int, float)) and not isinstance(model, bool):
        return synthetic_profile(int(model))
    from llmq.models import resolve_model

    src = resolve_model(None if model is None else str(model), revision=revision,
                        trust_remote_code=trust_remote_code, weights=False)  # the config is enough
    if src.kind == "gguf":
        return gguf_profile(src.path, src.name if model is not None else src.base_model_id)
    cfg = src.config()
    prof = config_profile(cfg, src.name, trust_remote_code=trust_remote_code)
    if getattr(cfg, "quantization_config", None):
        prof.notes.append("the folder is already quantized: its parameters are counted from the config")
        return prof
    if src.kind == "local" and not list(src.path.glob("*.safetensors")):
        prof.notes.append("the folder holds no weights: parameters counted from the config")
        return prof
    try:
        if src.kind == "local":
            count, dtype = count_local(src.path)
            source = "headers"
        else:
            count, dtype = count_hub(src.name, revision)
            source = "hub"
    except LlmqError:
        raise
    except Exception as e:  # noqa: BLE001 - metadata is an optimisation; the config count stands
        prof.notes.append(f"safetensors metadata unavailable ({type(e).__name__}); counted from the config")
        return prof
    if count != prof.parameters:
        prof.notes.append(f"the config builds {prof.parameters:,} parameters; the weights hold {count:,}")
        # Scale nothing: estimates use the layout; the count reported is the weights'.
    prof.parameters, prof.source, prof.checkpoint_dtype = count, source, dtype
    return prof


def human_count(n: float) -> str:
    for unit, div in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= div:
            v = n / div
            return f"{v:.1f}{unit}" if v < 100 else f"{v:.0f}{unit}"
    return str(int(n))
