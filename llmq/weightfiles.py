"""What weight files hold, read from their headers without loading a tensor: safetensors headers
(complete, names, dtypes, shapes), GGUF headers (complete), and how a checkpoint's tensors compare
with the parameters a model class expects (missing, or in another shape). The guards that need the
tensors' values (non-finite weights) are in ``llmq.safety``, which re-exports these."""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path
from typing import Any, Iterable, Mapping

from llmq.errors import CorruptModelError, ModelNotFoundError


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


def safetensors_tensors(path: str | os.PathLike) -> dict[str, tuple[str, tuple[int, ...]]]:
    """``{tensor name: (dtype, shape)}`` over every ``*.safetensors`` of a folder, from the headers
    (each file checked complete by ``safetensors_header``)."""
    out: dict[str, tuple[str, tuple[int, ...]]] = {}
    for f in sorted(Path(path).glob("*.safetensors")):
        for name, info in safetensors_header(f).items():
            if name != "__metadata__":
                out[name] = (str(info.get("dtype", "")), tuple(int(d) for d in info.get("shape") or ()))
    return out


def check_safetensors_folder(path: str | os.PathLike, required: bool = False) -> list[str]:
    """Validate every ``*.safetensors`` in a model folder (headers and lengths, no tensor reads) and
    the shard index if there is one; return the tensor names. ``required``: a folder without any is
    refused (llmq never unpickles ``pytorch_model.bin``: loading one can run code)."""
    path = Path(path)
    files = sorted(path.glob("*.safetensors"))
    if required and not files:
        other = sorted(p.name for g in ("*.bin", "*.pt", "*.pth", "*.ckpt") for p in path.glob(g))
        has = f"it holds {', '.join(other[:2])}, and " if other else ""
        raise ModelNotFoundError(
            f"{path} has no .safetensors weights ({has}llmq loads safetensors only); convert with transformers: "
            "model.save_pretrained(dir, safe_serialization=True).")
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


# -- GGUF files -------------------------------------------------------------------------------------
#: GGUF metadata value types -> struct format of one value (8: string, 9: array are read apart)
_GGUF_SCALARS = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}


def check_gguf_file(path: str | os.PathLike) -> None:
    """A complete GGUF file: the header parses and every tensor's bytes lie inside the file. A cut
    download otherwise fails as a reshape error deep inside gguf-py (or crashes llama.cpp). Reads
    the header through a memory map in well under a second (gguf-py's reader takes ~10 s on a
    49k-token vocabulary)."""
    path = Path(path)
    bad = f"{path} is not a valid GGUF file"
    size = path.stat().st_size
    if size < 24:
        raise CorruptModelError(f"{bad}: it is {size} bytes (truncated or empty); re-download it.")
    with open(path, "rb") as f:
        magic = f.read(4)
    if magic != b"GGUF":
        raise CorruptModelError(f"{bad}: it does not start with the GGUF magic bytes (a different format?).")
    try:
        end = _gguf_end(path)
    except (struct.error, ValueError, KeyError, IndexError) as e:
        raise CorruptModelError(f"{bad}: its header is truncated or damaged ({e}); re-download it.") from None
    if end > size:
        raise CorruptModelError(f"{bad}: it is truncated ({size:,} bytes, its tensors need {end:,}); re-download it.")


def _gguf_end(path: Path) -> int:
    """The byte offset where the last tensor of a GGUF file ends (header, then aligned data)."""
    import mmap

    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mm:
        return _gguf_data_end(mm)


def _gguf_data_end(mm: Any) -> int:
    from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

    pos = 4
    version, n_tensors, n_kv = struct.unpack_from("<IQQ", mm, pos)
    pos += 20
    if version < 2 or n_tensors > 1 << 24 or n_kv > 1 << 24:
        raise ValueError(f"version {version}, {n_tensors} tensors, {n_kv} keys")

    def string(pos: int) -> tuple[bytes, int]:
        (n,) = struct.unpack_from("<Q", mm, pos)
        if pos + 8 + n > len(mm):
            raise ValueError("a string runs past the end of the file")
        return mm[pos + 8:pos + 8 + n], pos + 8 + n

    def skip(vtype: int, pos: int) -> int:
        if vtype == 8:
            return string(pos)[1]
        if vtype == 9:
            itype, count = struct.unpack_from("<IQ", mm, pos)
            pos += 12
            if itype in _GGUF_SCALARS:
                return pos + count * struct.calcsize("<" + _GGUF_SCALARS[itype])
            for _ in range(count):
                pos = skip(itype, pos)
            return pos
        return pos + struct.calcsize("<" + _GGUF_SCALARS[vtype])

    alignment = 32
    for _ in range(n_kv):
        key, pos = string(pos)
        (vtype,) = struct.unpack_from("<I", mm, pos)
        pos += 4
        if key == b"general.alignment" and vtype == 4:
            (alignment,) = struct.unpack_from("<I", mm, pos)
        pos = skip(vtype, pos)
    last = 0
    for _ in range(n_tensors):
        _, pos = string(pos)
        (n_dims,) = struct.unpack_from("<I", mm, pos)
        dims = struct.unpack_from(f"<{n_dims}Q", mm, pos + 4)
        ttype, offset = struct.unpack_from("<IQ", mm, pos + 4 + 8 * n_dims)
        pos += 4 + 8 * n_dims + 12
        block, nbytes = GGML_QUANT_SIZES[GGMLQuantizationType(ttype)]
        n = 1
        for d in dims:
            n *= d
        last = max(last, offset + n // block * nbytes)
    start = (pos + alignment - 1) // alignment * alignment
    return start + last


# -- weights the checkpoint does not have, or has in another shape ----------------------------------
#: safetensors dtypes whose shapes are the parameter's (packed integer formats store other shapes)
FLOAT_DTYPES = ("F64", "F32", "F16", "BF16")


def checkpoint_name(k: str, present: Iterable[str], base_prefix: str = "") -> str | None:
    """The checkpoint's name for the model parameter ``k``, or None. ``base_prefix`` (e.g.
    ``"bert"``) lets a headless checkpoint match ``bert.*`` names and the other way round."""
    present = present if isinstance(present, (set, dict)) else set(present)
    if k in present:
        return k
    if base_prefix and k.startswith(base_prefix + ".") and k[len(base_prefix) + 1:] in present:
        return k[len(base_prefix) + 1:]
    if base_prefix and f"{base_prefix}.{k}" in present:
        return f"{base_prefix}.{k}"
    return None


def missing_weights(expected: Iterable[str], present: Iterable[str], base_prefix: str = "") -> list[str]:
    """Parameters a model class expects that a checkpoint lacks (transformers would initialise them
    randomly)."""
    present = set(present)
    return [k for k in expected if checkpoint_name(k, present, base_prefix) is None]


def mismatched_shapes(expected: Mapping[str, tuple[int, ...]], present: Mapping[str, tuple[str, tuple[int, ...]]],
                      base_prefix: str = "") -> list[tuple[str, tuple[int, ...], tuple[int, ...]]]:
    """``(parameter, shape the config implies, shape in the checkpoint)`` for every floating tensor
    whose stored shape differs: a config.json that contradicts its weights (e.g. a wrong
    ``intermediate_size``) would otherwise quantize and be saved as it is."""
    out = []
    for k, want in expected.items():
        name = checkpoint_name(k, present, base_prefix)
        if name is None or present[name][0] not in FLOAT_DTYPES:
            continue
        if tuple(present[name][1]) != tuple(want):
            out.append((k, tuple(want), tuple(present[name][1])))
    return out


def check_loading_info(info: Mapping[str, Any], what: str) -> None:
    """After ``from_pretrained(..., output_loading_info=True)``: refuse newly initialised weights."""
    missing = sorted(info.get("missing_keys") or [])
    mismatched = info.get("mismatched_keys") or []
    if missing or mismatched:
        names = missing or [str(m[0]) if isinstance(m, (tuple, list)) else str(m) for m in mismatched]
        raise CorruptModelError(f"{what}: transformers newly initialised {', '.join(names[:3])}"
                                f"{' ...' if len(names) > 3 else ''}; these weights are not in the checkpoint.")
