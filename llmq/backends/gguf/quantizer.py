"""GGUF output: llama.cpp's own converter writes an F32/F16 GGUF, llama.cpp's ``llama_model_quantize``
(through llama-cpp-python's bindings) writes the quantized bits, optionally steered by an importance
matrix computed from llmq's calibration windows.

Why these pieces:

- **Converter**: llama.cpp's ``convert_hf_to_gguf.py`` is not on PyPI as a module, but AutoRound
  (``auto-round`` on PyPI, pure Python) ships llama.cpp's ``conversion`` package for its own GGUF
  export and loads it with ``get_conversion``; it also honours ``LLAMA_CPP_ROOT`` (a llama.cpp
  checkout) for architectures newer than its copy. llmq only calls it; nothing is vendored.
- **Quantizer**: ``llama_model_quantize`` is the function the ``llama-quantize`` tool calls, so tensor
  types follow llama.cpp's per-tensor rules (Q6_K output, Q6_K ``attn_v``/``ffn_down`` halves in
  Q4_K_M, fallbacks for rows not divisible by 256, ...). Overrides go through the same params.
- **Importance matrix**: llama.cpp's semantics (``llama-imatrix``): per weight tensor, the mean of
  the squared input activation per input column over the calibration tokens. It is collected with
  forward hooks on the fp32 transformers model run one decoder layer at a time (``llmq.streaming``;
  the GGUF was converted from the same weights) and handed to ``llama_model_quantize`` as its C
  array of ``llama_model_imatrix_data``.

This module holds the config and the file pipeline (convert, importance matrix, quantize, Modelfile);
a ``.gguf`` source skips the converter (``llmq.backends.gguf.requantize``);
the scheme plugin (size estimate, advisor text, card facts, loading) is ``llmq.backends.gguf.plugin``
and llama.cpp as a runtime (scoring and speed) is ``llmq.backends.gguf.runtime``.
"""

from __future__ import annotations

import ctypes
import importlib.util
import json
import logging
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, ClassVar

from llmq.config import SchemeConfig, check_choice as _check_choice
from llmq.errors import ConfigError, LlmqError, MissingDependencyError, UnsupportedModelError
from llmq.meta import META_FILE

#: llmq scheme name -> llama.cpp file type (``llama_ftype`` / ``llama-quantize`` name)
SCHEMES: dict[str, str] = {
    "gguf-q8_0": "Q8_0",
    "gguf-q6_k": "Q6_K",
    "gguf-q5_k_m": "Q5_K_M",
    "gguf-q4_k_m": "Q4_K_M",
    "gguf-q4_0": "Q4_0",
}
#: intermediate file types the converter writes before quantizing ("auto": the checkpoint's own float
#: type, so the intermediate file is lossless and no larger than the checkpoint: a bf16 7B model's is
#: 13.8 GB instead of 27 GB in f32, and the quantized file is the same)
OUTTYPES = ("auto", "f32", "f16", "bf16")
EXTRA = "gguf"
#: (import name, pip distribution) the GGUF backend needs
REQUIRES = (("llama_cpp", "llama-cpp-python"), ("auto_round", "auto-round"), ("gguf", "gguf"),
            ("sentencepiece", "sentencepiece"))
#: ggml tensor types a user may force for output/embedding tensors
TENSOR_TYPES = ("f32", "f16", "bf16", "q8_0", "q6_k", "q5_k", "q5_0", "q4_k", "q4_0")

log = logging.getLogger(__name__)


# ---------------------------------------------------------------------------------------------
# config
# ---------------------------------------------------------------------------------------------
@dataclass(kw_only=True)
class GGUFConfig(SchemeConfig):
    """A llama.cpp file type. ``calibration=None`` quantizes without an importance matrix (exactly
    ``llama-quantize``); a named dataset/file/list (as for GPTQ/AWQ) computes one over ``n_samples``
    windows of ``seqlen`` tokens. ``output_tensor_type``/``token_embedding_type`` override llama.cpp's
    per-type rules (None keeps them); ``outtype`` is the converter's intermediate precision."""

    kind: ClassVar[str] = "gguf"

    ftype: str = "Q4_K_M"
    calibration: Any = None
    n_samples: int = 128
    seqlen: int = 512
    seed: int = 0
    output_tensor_type: str | None = None
    token_embedding_type: str | None = None
    outtype: str = "auto"
    threads: int = 0  # 0: all cores

    def validate(self) -> None:
        _check_choice("ftype", self.ftype, tuple(SCHEMES.values()))
        _check_choice("outtype", self.outtype, OUTTYPES)
        for key in ("output_tensor_type", "token_embedding_type"):
            v = getattr(self, key)
            if v is not None:
                _check_choice(key, str(v).lower(), TENSOR_TYPES)
        if not isinstance(self.n_samples, int) or self.n_samples < 1:
            raise ConfigError(f"n_samples must be a positive integer, got {self.n_samples!r}.")
        if not isinstance(self.seqlen, int) or self.seqlen < 8:
            raise ConfigError(f"seqlen must be an integer >= 8, got {self.seqlen!r}.")
        if not isinstance(self.threads, int) or self.threads < 0:
            raise ConfigError(f"threads must be an integer >= 0, got {self.threads!r}.")

    def to_dict(self) -> dict[str, Any]:
        out = super().to_dict()
        if not isinstance(self.calibration, (str, type(None))):
            out["calibration"] = f"<{len(self.calibration)} strings>"
        return out


def config_for(scheme: str, **overrides: Any) -> GGUFConfig:
    """The config of an llmq GGUF scheme name (``gguf-q4_k_m``), with user overrides."""
    if scheme not in SCHEMES:
        from llmq.errors import UnknownNameError

        raise UnknownNameError("GGUF scheme", scheme, SCHEMES)
    cfg = GGUFConfig(ftype=SCHEMES[scheme])
    return cfg.with_overrides(**overrides) if overrides else cfg  # type: ignore[return-value]


# ---------------------------------------------------------------------------------------------
# environment and model checks (before any weight loads)
# ---------------------------------------------------------------------------------------------
def missing_packages() -> list[str]:
    return [dist for mod, dist in REQUIRES if importlib.util.find_spec(mod) is None]


def check_environment(scheme: str = "gguf") -> None:
    """One line naming the fix when llama-cpp-python or the converter is missing."""
    missing = missing_packages()
    if missing:
        raise MissingDependencyError(f"Scheme {scheme!r}", missing, EXTRA)


def architecture(model_dir: Path) -> str:
    cfg = json.loads((Path(model_dir) / "config.json").read_text())
    archs = cfg.get("architectures") or []
    if not archs:
        tc = cfg.get("text_config") or {}
        archs = tc.get("architectures") or []
    if not archs:
        raise ConfigError(f"{model_dir}/config.json names no architecture; llama.cpp's converter needs one.")
    return archs[0]


def _conversion(model_dir: Path) -> Any:
    """llama.cpp's ``conversion`` package as AutoRound ships it (or ``LLAMA_CPP_ROOT``'s)."""
    from auto_round.export.export_to_gguf import llama_cpp_conversion as lcc

    # AutoRound's logger handlers are noisy at INFO; keep llama.cpp's converter quiet unless asked
    return lcc.get_conversion(model_dir, auto_update=False)


def _dist_version(dist: str) -> str | None:
    from llmq.backends.base import package_version

    return package_version(dist)


def check_model(model_dir: Path, scheme: str = "gguf") -> str:
    """The architecture name, or a one-line error when llama.cpp's converter does not support it."""
    arch = architecture(model_dir)
    try:
        _conversion(model_dir)
    except NotImplementedError as e:
        if isinstance(e.__cause__, AttributeError):  # converter module newer than the installed gguf-py
            raise LlmqError(
                f"Scheme {scheme!r}: llama.cpp's converter for {arch} needs a newer gguf-py than the installed gguf "
                f"{_dist_version('gguf')} (it lacks {e.__cause__}): pip install --no-deps <llama.cpp>/gguf-py, e.g. "
                "vendor/llama.cpp/gguf-py from the llama-cpp-python sdist (pip download --no-binary :all: "
                "--no-deps llama-cpp-python)."
            ) from e
        raise UnsupportedModelError(
            f"Scheme {scheme!r}: llama.cpp's converter does not support architecture {arch}; use a non-GGUF "
            "scheme, or point LLAMA_CPP_ROOT at a newer llama.cpp checkout that supports it."
        ) from e
    return arch


# ---------------------------------------------------------------------------------------------
# conversion, importance matrix, quantization
# ---------------------------------------------------------------------------------------------
#: config.json keys llama.cpp's converters read under names transformers no longer writes: architecture ->
#: {the converter's name: transformers' name} (GPT-2 saved by transformers 5 has no ``n_ctx``: KeyError)
LEGACY_HPARAMS = {"GPT2LMHeadModel": {"n_ctx": "n_positions"}}


def convert(model_dir: Path, out_file: Path, outtype: str = "f32") -> dict[str, Any]:
    """HF folder -> unquantized GGUF with llama.cpp's converter. Returns ``{arch, gguf_arch, converter}``."""
    import gguf
    import torch

    model_dir, out_file = Path(model_dir), Path(out_file)
    ctx = _conversion(model_dir)
    mod = ctx.module
    hparams = mod.ModelBase.load_hparams(model_dir, False)
    arch = mod.get_model_architecture(hparams, mod.ModelType.TEXT)
    cls = ctx.get_model_class(arch)
    for old, new in LEGACY_HPARAMS.get(arch, {}).items():
        if old not in hparams and new in hparams:
            hparams[old] = hparams[new]
    ftype = {"f32": gguf.LlamaFileType.ALL_F32, "f16": gguf.LlamaFileType.MOSTLY_F16,
             "bf16": gguf.LlamaFileType.MOSTLY_BF16}[outtype]
    conv_log = logging.getLogger("hf-to-gguf")
    level = conv_log.level
    conv_log.setLevel(logging.WARNING)
    try:
        with torch.inference_mode():
            inst = cls(model_dir, ftype, out_file, hparams=hparams)
            inst.write()
    finally:
        conv_log.setLevel(level)
    return {"architecture": arch, "gguf_arch": gguf.MODEL_ARCH_NAMES[cls.model_arch],
            "converter": ctx.source, "n_layers": int(inst.block_count)}


def resolve_outtype(model_dir: Path, outtype: str) -> str:
    """``"auto"``: ``bf16``/``f16`` when every floating tensor of the checkpoint is bf16/f16 (the
    intermediate GGUF then holds them exactly), else ``f32``."""
    if outtype != "auto":
        return outtype
    from llmq.safety import safetensors_header

    dtypes = {info["dtype"] for f in sorted(Path(model_dir).glob("*.safetensors"))
              for k, info in safetensors_header(f).items() if k != "__metadata__"}
    floats = dtypes & {"F64", "F32", "F16", "BF16", "F8_E4M3", "F8_E5M2"}
    return {frozenset({"BF16"}): "bf16", frozenset({"F16"}): "f16"}.get(frozenset(floats), "f32")


def _tensor_name_map(model_dir: Path) -> tuple[Any, int]:
    import gguf

    ctx = _conversion(model_dir)
    mod = ctx.module
    hparams = mod.ModelBase.load_hparams(model_dir, False)
    cls = ctx.get_model_class(mod.get_model_architecture(hparams, mod.ModelType.TEXT))
    cfg = hparams.get("text_config", hparams)
    n = int(cfg.get("num_hidden_layers") or cfg.get("n_layer") or cfg.get("num_layers"))
    return gguf.get_tensor_name_map(cls.model_arch, n), n


def importance(model_dir: Callable[[], Path], calibration: Any, imatrix: dict[str, Any] | None, config: GGUFConfig,
               timings: dict[str, float], progress: bool) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
    """``(importance matrix, its record)`` for ``quantize_file``: the caller's, or computed on the
    transformers model ``model_dir()`` names from ``calibration`` (default: the config's); ``(None,
    None)`` without either. Its wall time goes to ``timings["imatrix_s"]``."""
    source = calibration if calibration is not None else config.calibration
    if imatrix is not None:
        return imatrix, {"source": "imatrix given by caller", "tensors": len(imatrix)}
    if source is None:
        return None, None
    t = time.perf_counter()
    out = compute_imatrix(model_dir(), source, n_samples=config.n_samples, seqlen=config.seqlen, seed=config.seed,
                          progress=progress)
    timings["imatrix_s"] = round(time.perf_counter() - t, 2)
    return out


def compute_imatrix(model_dir: Path, calibration: Any, *, n_samples: int = 128, seqlen: int = 512, seed: int = 0,
                    progress: bool = True) -> tuple[dict[str, Any], dict[str, Any]]:
    """``({gguf tensor name: float32 array}, fingerprint)``: llama-imatrix's statistic (mean over
    calibration tokens of each input column's squared activation) for every Linear inside the
    decoder blocks (llama-imatrix skips the output tensor by default). The fp32 model runs one
    decoder layer at a time from the checkpoint's shards (``llmq.streaming.LayerRunner``), so a 7B
    model needs one layer in memory, not 27 GB."""
    import numpy as np
    import torch
    from transformers import AutoTokenizer

    from llmq import calibration as cal
    from llmq.streaming import BlockModel, LayerRunner

    model_dir = Path(model_dir)
    if isinstance(calibration, cal.Calibration):  # windows already cut (llmq.quantize builds them)
        calib = calibration
    else:
        tok = AutoTokenizer.from_pretrained(model_dir)
        calib = cal.build(calibration, tok, n_samples=n_samples, seqlen=seqlen, seed=seed)
    name_map, _ = _tensor_name_map(model_dir)
    bm = BlockModel(model_dir, torch.float32)
    sums: dict[str, Any] = {}
    counts: dict[str, int] = {}

    def hook(name: str):
        def fn(_mod, args, _out):
            x = args[0].detach().float().reshape(-1, args[0].shape[-1])
            s = (x * x).sum(0, dtype=torch.float64)
            sums[name] = sums[name] + s if name in sums else s
            counts[name] = counts.get(name, 0) + x.shape[0]
        return fn

    runner = LayerRunner(bm)
    runner.start(calib.samples)
    found = 0
    from tqdm.auto import tqdm

    for i in tqdm(range(len(bm.layers)), desc="imatrix", unit="layer", disable=not progress):
        with runner.layer(i) as layer:
            hooks = []
            for name, m in layer.named_modules():
                if not isinstance(m, torch.nn.Linear):
                    continue
                gname = name_map.get_name(f"{bm.layers_name}.{i}.{name}.weight", try_suffixes=(".weight",))
                if gname is None or not gname.startswith("blk."):
                    continue
                hooks.append(m.register_forward_hook(hook(gname)))
            found += len(hooks)
            try:
                runner.forward(layer)
            finally:
                for h in hooks:
                    h.remove()
    if not found:
        raise LlmqError(f"No Linear of {model_dir.name} maps to a llama.cpp tensor name; cannot build an imatrix.")
    out = {g: (sums[g] / counts[g]).float().numpy().astype(np.float32) for g in sums}
    return out, {**calib.fingerprint, "tensors": len(out), "statistic": "mean squared input activation per column"}


def _ggml_type(name: str | None) -> int:
    import gguf

    return int(gguf.GGMLQuantizationType[str(name).upper()])


def quantize_file(src: Path, dst: Path, ftype: str, *, imatrix: dict[str, Any] | None = None,
                  output_tensor_type: str | None = None, token_embedding_type: str | None = None,
                  threads: int = 0, dry_run: bool = False, allow_requantize: bool = False) -> None:
    """``llama_model_quantize`` (what ``llama-quantize`` runs) with llama.cpp's default params, plus
    the importance matrix and overrides given; ``allow_requantize`` lets it read already quantized
    tensors (``llama-quantize --allow-requantize``)."""
    import llama_cpp
    import numpy as np

    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = getattr(llama_cpp, f"LLAMA_FTYPE_MOSTLY_{ftype}")
    params.nthread = threads
    params.dry_run = dry_run
    params.allow_requantize = allow_requantize
    if output_tensor_type is not None:
        params.output_tensor_type = _ggml_type(output_tensor_type)
    if token_embedding_type is not None:
        params.token_embedding_type = _ggml_type(token_embedding_type)
    keep: list[Any] = []  # the C side reads these during the call: keep them alive
    if imatrix:
        arr = (llama_cpp.llama_model_imatrix_data * (len(imatrix) + 1))()
        for i, (name, values) in enumerate(imatrix.items()):
            v = np.ascontiguousarray(values, dtype=np.float32)
            if not np.isfinite(v).all():
                raise LlmqError(f"importance matrix for {name} has non-finite values.")
            b = name.encode()
            keep += [v, b]
            arr[i].name = b
            arr[i].data = v.ctypes.data_as(ctypes.POINTER(ctypes.c_float))
            arr[i].size = v.size
        arr[len(imatrix)].name = None  # the C loop stops at a NULL name
        keep.append(arr)
        params.imatrix = ctypes.cast(arr, ctypes.POINTER(llama_cpp.llama_model_imatrix_data))
    rc = llama_cpp.llama_model_quantize(str(src).encode(), str(dst).encode(), ctypes.byref(params))
    if rc != 0:
        raise LlmqError(f"llama_model_quantize failed ({rc}) on {src.name} -> {ftype}.")


def tensor_types(path: Path) -> dict[str, str]:
    """``{tensor name: ggml type}`` of a GGUF file (the table ``llama-quantize`` prints)."""
    import gguf

    r = gguf.GGUFReader(str(path))
    return {t.name: t.tensor_type.name for t in r.tensors}


def type_counts(types: dict[str, str]) -> dict[str, int]:
    out: dict[str, int] = {}
    for t in types.values():
        out[t] = out.get(t, 0) + 1
    return dict(sorted(out.items()))


# ---------------------------------------------------------------------------------------------
# the scheme's whole job: folder in, folder with one .gguf out
# ---------------------------------------------------------------------------------------------
@dataclass
class GGUFResult:
    path: Path  # the .gguf file
    record: dict[str, Any] = field(default_factory=dict)  # what goes into llmq.json


def build(model_dir: Path, work: Path, config: GGUFConfig, *, scheme: str, name: str,
          calibration: Any = None, imatrix: dict[str, Any] | None = None,
          progress: bool = True) -> tuple[Path, dict[str, Any]]:
    """Convert ``model_dir`` with llama.cpp's converter into ``work``, quantize to ``config.ftype``
    (with an importance matrix from ``calibration`` (a ``Calibration`` or a source), else from
    ``config.calibration``, or the ``imatrix`` given) into ``work/<name>.gguf``; returns the file and
    its record (what ``llmq.json`` says about it). ``work`` is a scratch folder the caller owns."""
    model_dir, work = Path(model_dir), Path(work)
    arch = check_model(model_dir, scheme)
    timings: dict[str, float] = {}
    t = time.perf_counter()
    outtype = resolve_outtype(model_dir, config.outtype)
    f32 = work / f"model-{outtype}.gguf"
    conv = convert(model_dir, f32, outtype)
    conv["outtype"] = outtype
    timings["convert_s"] = round(time.perf_counter() - t, 2)
    imatrix, calib_record = importance(lambda: model_dir, calibration, imatrix, config, timings, progress)
    t = time.perf_counter()
    dst = work / f"{name}.gguf"
    quantize_file(f32, dst, config.ftype, imatrix=imatrix, output_tensor_type=config.output_tensor_type,
                  token_embedding_type=config.token_embedding_type, threads=config.threads)
    timings["quantize_s"] = round(time.perf_counter() - t, 2)
    f32.unlink()
    types = tensor_types(dst)
    record = {
        "quant_method": "gguf", "scheme": scheme, "format": "gguf", "file": dst.name, "ftype": config.ftype,
        "config": config.to_dict(), "calibration": calib_record, "imatrix": calib_record is not None,
        **conv, "source_architecture": arch, "tensor_types": type_counts(types),
        "output_tensor": types.get("output.weight"), "token_embd_tensor": types.get("token_embd.weight"),
        "bytes": dst.stat().st_size, "timings": timings, "versions": versions(),
    }
    return dst, record


def quantize_model(model_dir: Path, out_dir: Path, config: GGUFConfig, *, name: str | None = None,
                   scheme: str | None = None, overwrite: bool = False, progress: bool = False,
                   imatrix: dict[str, Any] | None = None) -> GGUFResult:
    """Folder in, folder out, without ``llmq.quantize``'s pipeline (the bench script and the
    backend tests use it): ``out_dir/<name>.gguf`` + ``Modelfile`` + ``llmq.json`` (the record)
    through a temp folder renamed at the end."""
    from llmq.io import atomic_dir, write_json

    scheme = scheme or f"gguf-{config.ftype.lower()}"
    check_environment(scheme)
    model_dir, out_dir = Path(model_dir), Path(out_dir)
    if config.calibration is not None:
        from llmq import calibration as cal

        cal.validate_source(config.calibration)
    name = name or f"{model_dir.name}-{config.ftype}"
    from llmq.owners import scratch_dir

    with atomic_dir(out_dir, overwrite=overwrite) as tmp, scratch_dir("gguf") as work:
        dst, record = build(model_dir, Path(work), config, scheme=scheme, name=name, imatrix=imatrix,
                            progress=progress)
        shutil.move(str(dst), tmp / dst.name)
        write_modelfile(tmp, dst.name)
        write_json(tmp / META_FILE, record)
    return GGUFResult(out_dir / dst.name, record)


def versions() -> dict[str, str | None]:
    from llmq.backends.base import package_version

    return {dist: package_version(dist) for _, dist in REQUIRES}


# ---------------------------------------------------------------------------------------------
# publishing facts
# ---------------------------------------------------------------------------------------------
def modelfile_text(gguf_name: str, *, num_ctx: int | None = None) -> str:
    """An Ollama Modelfile next to the .gguf. Ollama reads the chat template and stop tokens from the
    GGUF's ``tokenizer.chat_template`` metadata, so ``FROM`` is all it needs."""
    lines = [f"# ollama create <name> -f Modelfile && ollama run <name>", f"FROM ./{gguf_name}"]
    if num_ctx:
        lines.append(f"PARAMETER num_ctx {num_ctx}")
    return "\n".join(lines) + "\n"


def write_modelfile(folder: Path, gguf_name: str, **kw: Any) -> Path:
    p = Path(folder) / "Modelfile"
    p.write_text(modelfile_text(gguf_name, **kw))
    return p
