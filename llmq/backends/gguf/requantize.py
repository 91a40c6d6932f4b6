"""A ``.gguf`` source requantized by llama.cpp alone: ``llama_model_quantize`` reads the source file
and writes the new type (``allow_requantize`` where its tensors are already quantized, as
``llama-quantize --allow-requantize``), so every metadata key is copied as it is: architecture
hyperparameters, chat template, and the tokenizer (vocabulary, scores, token types, merges).

Why not the converter: a GGUF dequantized by transformers and converted back by llama.cpp's
``convert_hf_to_gguf`` gets a tokenizer rebuilt from transformers' ``tokenizer.json``. For a
SentencePiece vocabulary that loses the scores (every one becomes -1000) or, where the converter
falls back to BPE, names the wrong tokenizer model (``gpt2`` with whatever pre-tokenizer hash
matched), which transformers then cannot read.

Requantizing tensors that are already quantized adds the new rounding error to the old one; the
record says so (``requantized``, ``source_ftype``) and converting from an F32/F16 source is better.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from llmq.backends.gguf.quantizer import (GGUFConfig, importance, quantize_file, tensor_types, type_counts,
                                          versions)
from llmq.errors import LlmqError

#: ggml tensor types that hold plain floats (requantizing from these loses nothing beyond the new type)
FLOAT_TYPES = ("F32", "F16", "BF16")


def check_finite_floats(path: Path, what: str) -> dict[str, str]:
    """Refuse a GGUF whose F32/F16 tensors (norms, overrides, or every weight of an F32/F16 file) hold
    NaN/Inf; returns ``{tensor name: ggml type}``."""
    import numpy as np
    import gguf

    r = gguf.GGUFReader(str(path))
    for t in r.tensors:
        if t.tensor_type.name in ("F32", "F16") and not np.isfinite(np.asarray(t.data)).all():
            raise LlmqError(f"{what}: tensor {t.name} of {Path(path).name} has NaN/Inf values.")
    return {t.name: t.tensor_type.name for t in r.tensors}


def file_type_name(path: Path) -> str | None:
    """The file's ``general.file_type`` as ``llama-quantize`` names it (``Q4_1``, ``F32``), from the header."""
    import gguf
    from transformers.integrations.gguf import read_gguf_metadata

    v = read_gguf_metadata(str(path))[0].get("general.file_type")
    try:
        name = gguf.LlamaFileType(int(v)).name
    except (TypeError, ValueError):
        return None
    return name.split("_", 1)[1] if name.startswith(("MOSTLY_", "ALL_")) else name


def requantize(src: Path, work: Path, config: GGUFConfig, *, scheme: str, name: str, calibration: Any = None,
               imatrix: dict[str, Any] | None = None, hf_dir: Path | None = None,
               progress: bool = False) -> tuple[Path, dict[str, Any]]:
    """A ``.gguf`` source to ``config.ftype`` by llama.cpp alone (``llama_model_quantize`` reads ``src``):
    every metadata key, the tokenizer included, is copied as it is. An importance matrix (from
    ``calibration``) is computed on ``hf_dir`` (default: the source dequantized by transformers into
    llmq's cache). Returns the file (in ``work``) and its record, as ``quantizer.build`` does."""
    src, work = Path(src), Path(work)
    timings: dict[str, float] = {}
    src_types = check_finite_floats(src, "The source GGUF")
    src_ftype = file_type_name(src)
    requantized = any(t not in FLOAT_TYPES for t in src_types.values())
    def hf() -> Path:  # dequantized once into llmq's cache, only when an importance matrix is computed
        from llmq.models import resolve_model

        return hf_dir if hf_dir is not None else resolve_model(str(src)).local_dir()

    imatrix, calib_record = importance(hf, calibration, imatrix, config, timings, progress)
    t = time.perf_counter()
    dst = work / f"{name}.gguf"
    quantize_file(src, dst, config.ftype, imatrix=imatrix, output_tensor_type=config.output_tensor_type,
                  token_embedding_type=config.token_embedding_type, threads=config.threads,
                  allow_requantize=requantized)
    timings["quantize_s"] = round(time.perf_counter() - t, 2)
    types = tensor_types(dst)
    record = {
        "quant_method": "gguf", "scheme": scheme, "format": "gguf", "file": dst.name, "ftype": config.ftype,
        "config": config.to_dict(), "calibration": calib_record, "imatrix": calib_record is not None,
        "converter": None, "source_format": "gguf", "source_file": src.name, "source_ftype": src_ftype,
        "source_tensor_types": type_counts(src_types), "requantized": requantized,
        "tensor_types": type_counts(types), "output_tensor": types.get("output.weight"),
        "token_embd_tensor": types.get("token_embd.weight"), "bytes": dst.stat().st_size, "timings": timings,
        "versions": versions(),
    }
    return dst, record


