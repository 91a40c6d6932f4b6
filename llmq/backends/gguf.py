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
  forward hooks on the fp32 transformers model (the GGUF was converted from the same weights) and
  handed to ``llama_model_quantize`` as its C array of ``llama_model_imatrix_data``.

Everything scheme-specific (config, quantize/save, size estimate, advisor text, card facts) lives in
this module so a scheme plugin can wrap it; evaluation/speed on llama.cpp is in ``llmq.eval.llamacpp``.
"""

from __future__ import annotations

import ctypes
import importlib.util
import json
import logging
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from llmq.backends.base import Backend as _Backend
from llmq.config import SchemeConfig, check_choice as _check_choice
from llmq.errors import ConfigError, LlmqError, MissingDependencyError

#: llmq scheme name -> llama.cpp file type (``llama_ftype`` / ``llama-quantize`` name)
SCHEMES: dict[str, str] = {
    "gguf-q8_0": "Q8_0",
    "gguf-q6_k": "Q6_K",
    "gguf-q5_k_m": "Q5_K_M",
    "gguf-q4_k_m": "Q4_K_M",
    "gguf-q4_0": "Q4_0",
}
#: intermediate file types the converter writes before quantizing
OUTTYPES = ("f32", "f16", "bf16")
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
    outtype: str = "f32"
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
        raise ConfigError(
            f"Scheme {scheme!r}: llama.cpp's converter does not support architecture {arch}; use a non-GGUF "
            "scheme, or point LLAMA_CPP_ROOT at a newer llama.cpp checkout that supports it."
        ) from e
    return arch


# ---------------------------------------------------------------------------------------------
# conversion, importance matrix, quantization
# ---------------------------------------------------------------------------------------------
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
    ftype = {"f32": gguf.LlamaFileType.ALL_F32, "f16": gguf.LlamaFileType.MOSTLY_F16,
             "bf16": gguf.LlamaFileType.MOSTLY_BF16}[outtype]
    conv_log = logging.getLogger("hf-to-gguf")
    level = conv_log.level
    conv_log.setLevel(logging.WARNING)
    try:
        with torch.inference_mode():
            inst = cls(model_dir, ftype, out_file)
            inst.write()
    finally:
        conv_log.setLevel(level)
    return {"architecture": arch, "gguf_arch": gguf.MODEL_ARCH_NAMES[cls.model_arch],
            "converter": ctx.source, "n_layers": int(inst.block_count)}


def _tensor_name_map(model_dir: Path) -> tuple[Any, int]:
    import gguf

    ctx = _conversion(model_dir)
    mod = ctx.module
    hparams = mod.ModelBase.load_hparams(model_dir, False)
    cls = ctx.get_model_class(mod.get_model_architecture(hparams, mod.ModelType.TEXT))
    cfg = hparams.get("text_config", hparams)
    n = int(cfg.get("num_hidden_layers") or cfg.get("n_layer") or cfg.get("num_layers"))
    return gguf.get_tensor_name_map(cls.model_arch, n), n


def compute_imatrix(model_dir: Path, calibration: Any, *, n_samples: int = 128, seqlen: int = 512, seed: int = 0,
                    include_output: bool = False, progress: bool = False) -> tuple[dict[str, Any], dict[str, Any]]:
    """``({gguf tensor name: float32 array}, fingerprint)``: llama-imatrix's statistic (mean over
    calibration tokens of each input column's squared activation) for every Linear inside the
    decoder blocks (llama-imatrix skips the output tensor unless ``--process-output``)."""
    import numpy as np
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from llmq import calibration as cal

    model_dir = Path(model_dir)
    if isinstance(calibration, cal.Calibration):  # windows already cut (llmq.quantize builds them)
        calib = calibration
    else:
        tok = AutoTokenizer.from_pretrained(model_dir)
        calib = cal.build(calibration, tok, n_samples=n_samples, seqlen=seqlen, seed=seed)
    name_map, _ = _tensor_name_map(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    sums: dict[str, Any] = {}
    counts: dict[str, int] = {}
    hooks = []

    def hook(name: str):
        def fn(_mod, args, _out):
            x = args[0].detach().float().reshape(-1, args[0].shape[-1])
            s = (x * x).sum(0, dtype=torch.float64)
            sums[name] = sums[name] + s if name in sums else s
            counts[name] = counts.get(name, 0) + x.shape[0]
        return fn

    targets = {}
    for name, m in model.named_modules():
        if not isinstance(m, torch.nn.Linear):
            continue
        gname = name_map.get_name(name + ".weight", try_suffixes=(".weight",))
        if gname is None:
            continue
        if not gname.startswith("blk.") and not include_output:
            continue
        targets[name] = gname
        hooks.append(m.register_forward_hook(hook(gname)))
    if not targets:
        raise LlmqError(f"No Linear of {model_dir.name} maps to a llama.cpp tensor name; cannot build an imatrix.")
    try:
        with torch.inference_mode():
            for i, s in enumerate(calib.samples):
                model(torch.tensor([s]))
                if progress:
                    print(f"imatrix {i + 1}/{len(calib.samples)}", end="\r", flush=True)
    finally:
        for h in hooks:
            h.remove()
    out = {g: (sums[g] / counts[g]).float().numpy().astype(np.float32) for g in sums}
    return out, {**calib.fingerprint, "tensors": len(out), "statistic": "mean squared input activation per column"}


def _ggml_type(name: str | None) -> int:
    import gguf

    return int(gguf.GGMLQuantizationType[str(name).upper()])


def quantize_file(src: Path, dst: Path, ftype: str, *, imatrix: dict[str, Any] | None = None,
                  output_tensor_type: str | None = None, token_embedding_type: str | None = None,
                  threads: int = 0, dry_run: bool = False) -> None:
    """``llama_model_quantize`` (what ``llama-quantize`` runs) with llama.cpp's default params, plus
    the importance matrix and overrides given."""
    import llama_cpp
    import numpy as np

    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = getattr(llama_cpp, f"LLAMA_FTYPE_MOSTLY_{ftype}")
    params.nthread = threads
    params.dry_run = dry_run
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
          progress: bool = False) -> tuple[Path, dict[str, Any]]:
    """Convert ``model_dir`` with llama.cpp's converter into ``work``, quantize to ``config.ftype``
    (with an importance matrix from ``calibration`` (a ``Calibration`` or a source), else from
    ``config.calibration``, or the ``imatrix`` given) into ``work/<name>.gguf``; returns the file and
    its record (what ``llmq.json`` says about it). ``work`` is a scratch folder the caller owns."""
    model_dir, work = Path(model_dir), Path(work)
    arch = check_model(model_dir, scheme)
    timings: dict[str, float] = {}
    t = time.perf_counter()
    f32 = work / f"model-{config.outtype}.gguf"
    conv = convert(model_dir, f32, config.outtype)
    timings["convert_s"] = round(time.perf_counter() - t, 2)
    calib_record = None
    source = calibration if calibration is not None else config.calibration
    if imatrix is None and source is not None:
        t = time.perf_counter()
        imatrix, calib_record = compute_imatrix(model_dir, source, n_samples=config.n_samples,
                                                seqlen=config.seqlen, seed=config.seed, progress=progress)
        timings["imatrix_s"] = round(time.perf_counter() - t, 2)
    elif imatrix is not None:
        calib_record = {"source": "imatrix given by caller", "tensors": len(imatrix)}
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
    with atomic_dir(out_dir, overwrite=overwrite) as tmp, tempfile.TemporaryDirectory(prefix="llmq-gguf-") as work:
        dst, record = build(model_dir, Path(work), config, scheme=scheme, name=name, imatrix=imatrix,
                            progress=progress)
        shutil.move(str(dst), tmp / dst.name)
        write_modelfile(tmp, dst.name)
        write_json(tmp / "llmq.json", record)
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


# ---------------------------------------------------------------------------------------------
# size estimate from a parameter profile
# ---------------------------------------------------------------------------------------------
#: (block elements, block bytes) of ggml types (ggml-common.h)
BLOCKS = {"F32": (1, 4), "F16": (1, 2), "BF16": (1, 2), "Q8_0": (32, 34), "Q4_0": (32, 18), "Q5_0": (32, 22),
          "Q5_1": (32, 24), "Q4_1": (32, 20), "Q4_K": (256, 144), "Q5_K": (256, 176), "Q6_K": (256, 210)}
_FALLBACK = {"Q4_K": "Q5_0", "Q5_K": "Q5_1", "Q6_K": "Q8_0"}  # llama.cpp's fallback for ne[0] % 256 != 0
_BASE = {"Q8_0": "Q8_0", "Q6_K": "Q6_K", "Q5_K_M": "Q5_K", "Q4_K_M": "Q4_K", "Q4_0": "Q4_0"}


def _tensor_bytes(t: str, rows: int, cols: int) -> tuple[int, str]:
    if t in _FALLBACK and cols % 256:
        t = _FALLBACK[t]
    n, b = BLOCKS[t]
    return rows * ((cols + n - 1) // n) * b, t


def _use_more_bits(i: int, n: int) -> bool:
    return i < n // 8 or i >= 7 * n // 8 or (i - n // 8) % 3 == 2


def estimate_size(profile: Any, scheme: str) -> Any:
    """Bytes of the GGUF ``scheme`` writes, from the profile alone: llama.cpp's main per-tensor rules
    (output/tied embedding in Q6_K for K-quants and Q8_0 stays Q8_0; Q4_K_M/Q5_K_M give half the
    ``attn_v``/``ffn_down`` layers Q6_K; fallbacks for rows not divisible by 256; norms F32). An
    estimate: ``scripts/bench_gguf.py`` checks it against real files."""
    from llmq.advisor.estimate import SizeEstimate

    ftype = SCHEMES[scheme]
    base = _BASE[ftype]
    total = 0
    q_params = 0
    bd: dict[str, int] = {}

    def add(t: str, rows: int, cols: int) -> None:
        nonlocal total
        b, used = _tensor_bytes(t, rows, cols)
        total += b
        bd[used] = bd.get(used, 0) + b

    n = max(profile.layers, 1)
    for lin in profile.linears:
        if not lin.in_layers:
            continue
        t = base
        try:
            layer = int(lin.name.split(".layers.")[1].split(".")[0]) if ".layers." in lin.name else 0
        except ValueError:
            layer = 0
        short = lin.name.rsplit(".", 1)[-1]
        if ftype in ("Q4_K_M", "Q5_K_M") and short in ("v_proj", "down_proj") and _use_more_bits(layer, n):
            t = "Q6_K"
        add(t, lin.out_features, lin.in_features)
        q_params += lin.numel
    hidden = profile.hidden or 1
    # output (or the tied embedding that doubles as output): Q8_0 when rows do not fit the base
    # type's blocks or the base is Q8_0, else Q6_K; an untied token_embd keeps the base type
    out_type = "Q8_0" if base == "Q8_0" or hidden % BLOCKS[base][0] else "Q6_K"
    add(out_type, profile.vocab, hidden)
    if not profile.tied:
        add(base, profile.vocab, hidden)
    other = max(profile.parameters - q_params - profile.embedding_params - profile.lm_head_params, 0)
    total += other * 4
    bd["F32 (norms)"] = other * 4
    # metadata: token strings, scores/types and BPE merges (measured 36 bytes per token on SmolLM2's 49k vocab)
    header = 36 * profile.vocab + 16384
    total += header
    bd["metadata (approx.)"] = header
    return SizeEstimate(scheme, ftype, int(total), q_params, other, "float32",
                        8 * total / max(profile.parameters, 1), bd)


# ---------------------------------------------------------------------------------------------
# the scheme plugin
# ---------------------------------------------------------------------------------------------
_ROLE = ("llama.cpp file for CPU/edge runtimes (llama.cpp, Ollama, LM Studio); scored on llama.cpp; "
         "not a transformers/vLLM GPU serving format")
#: advisor ranks: on CPU each GGUF type sits right after the transformers scheme of its precision
#: (int8-dynamic 0, bf16 1, bnb-int8 2, bnb-nf4 6, bnb-fp4 7); with a GPU, after every GPU format
#: (llmq[gguf] builds llama.cpp for CPU). Which one wins on CPU is measured by ``--scheme auto``.
_GPU_LAST = {"gpu_fits": 20, "gpu_8bit": 20, "gpu_4bit": 20}


def _scheme(name: str, bits: float, precision: str, cpu: float, what: str) -> Any:
    from llmq.backends.base import Scheme

    ftype = SCHEMES[name]
    return Scheme(name, "gguf", GGUFConfig, {"ftype": ftype}, bits,
                  f"llama.cpp {ftype} GGUF ({what}); optional importance matrix from calibration",
                  precision=precision, role=f"{what}: {_ROLE}", gpu_only_kernels=False,
                  tree_rank={"cpu": cpu, **{k: v + cpu / 10 for k, v in _GPU_LAST.items()}})


def _gguf_in(path: Path) -> Path | None:
    """The .gguf ``path`` is, or the one .gguf of an output folder without config.json."""
    path = Path(path)
    if path.is_file():
        return path if path.suffix == ".gguf" else None
    if path.is_dir() and not (path / "config.json").is_file():
        files = sorted(path.glob("*.gguf"))
        if len(files) == 1:
            return files[0]
    return None


def llama_cpp_installed() -> bool:
    return importlib.util.find_spec("llama_cpp") is not None


@dataclass
class GGUFArtifact:
    """What ``GGUFBackend.quantize`` returns: the quantized file in a scratch folder, and its record."""

    path: Path
    record: dict[str, Any]


def output_name(model_dir: Path) -> str:
    """The model's name for ``<name>-<FTYPE>.gguf``: a Hub snapshot's repo name, a dequantized GGUF
    cache folder's source stem (without llmq's cache hash and the source's own type), else the folder name."""
    model_dir = Path(model_dir)
    if model_dir.parent.name == "snapshots":
        return model_dir.parent.parent.name.split("--")[-1]
    from llmq.models import cache_dir

    if model_dir.parent == cache_dir() / "gguf":
        stem = model_dir.name.rsplit("-", 1)[0]
        return stem.split(".")[0] or stem
    return model_dir.name


class GGUFBackend(_Backend):
    """llama.cpp's formats: the converter + ``llama_model_quantize`` write one ``.gguf``; llama.cpp
    (llama-cpp-python) runs and scores it. The loader falls back to transformers (dequantized) only
    when llama-cpp-python is not installed, and the model it returns says which runtime it is."""

    name = "gguf"
    requires = REQUIRES
    extra = EXTRA
    needs_calibration = False  # optional: an importance matrix when calibration= is given
    quant_methods = ("gguf",)
    runtime = "llama.cpp"
    runs_in_memory = False
    weight_patterns = ("*.gguf",)
    #: the evaluator's longest window on this runtime (``LlamaCppLM``'s context)
    eval_context = 2048
    schemes = (
        _scheme("gguf-q8_0", 8, "8", 0.6, "8-bit Q8_0"),
        _scheme("gguf-q6_k", 6, "8", 1.5, "6-bit K-quant Q6_K"),
        _scheme("gguf-q5_k_m", 5, "4", 5.5, "5-bit K-quant mix Q5_K_M"),
        _scheme("gguf-q4_k_m", 4, "4", 5.6, "4-bit K-quant mix Q4_K_M"),
        _scheme("gguf-q4_0", 4, "4", 7.5, "4-bit scale-only Q4_0"),
    )

    def validate_model(self, source: Any) -> None:
        """The converter must know the architecture: checked on the config alone, before weights load."""
        with tempfile.TemporaryDirectory(prefix="llmq-gguf-cfg-") as d:
            source.config().to_json_file(str(Path(d) / "config.json"))
            check_model(Path(d), self.scheme.name)

    def quantize(self, model_dir: Path, calibration: Any, device: str) -> GGUFArtifact:
        """Convert + (imatrix on the fp32 transformers model, CPU) + quantize into a scratch folder
        removed at exit; ``save`` copies the file out."""
        import atexit

        work = Path(tempfile.mkdtemp(prefix="llmq-gguf-"))
        atexit.register(shutil.rmtree, work, True)
        name = f"{output_name(model_dir)}-{self.config.ftype}"
        path, record = build(model_dir, work, self.config, scheme=self.scheme.name, name=name,
                             calibration=calibration)
        return GGUFArtifact(path, record)

    def save(self, model: GGUFArtifact, tokenizer: Any, out: Path) -> None:
        shutil.copyfile(model.path, Path(out) / model.path.name)
        write_modelfile(out, model.path.name)

    def quantization_config(self, model: GGUFArtifact) -> dict | None:
        return model.record

    @classmethod
    def missing_files(cls, folder: Path) -> list[str]:
        files = list(Path(folder).glob("*.gguf"))
        missing = [] if len(files) == 1 else [f"one .gguf file (found {len(files)})"]
        if not (Path(folder) / "Modelfile").is_file():
            missing.append("Modelfile")
        return missing

    @classmethod
    def verify_output(cls, folder: Path, what: str) -> None:
        """The file parses as GGUF and its float tensors (norms, F32/F16 overrides) are finite."""
        import numpy as np
        import gguf

        for f in Path(folder).glob("*.gguf"):
            r = gguf.GGUFReader(str(f))
            for t in r.tensors:
                if t.tensor_type.name in ("F32", "F16") and not np.isfinite(np.asarray(t.data)).all():
                    raise LlmqError(f"{what}: tensor {t.name} of {f.name} has NaN/Inf values.")

    @classmethod
    def recognises(cls, path: Path) -> bool:
        return _gguf_in(path) is not None

    @classmethod
    def load_tokenizer(cls, path: Path) -> Any:
        from transformers import AutoTokenizer

        f = _gguf_in(path)
        return AutoTokenizer.from_pretrained(f.parent, gguf_file=f.name)

    @classmethod
    def load(cls, path: Path, *, device: str, dtype: Any = "auto", kernel: str | None = None) -> tuple[Any, Any]:
        """``(LlamaCppLM, tokenizer)`` when llama-cpp-python is installed (the file runs on llama.cpp);
        otherwise transformers' GGUF loader dequantizes it (``runtime`` says which)."""
        f = _gguf_in(path)
        if f is None:
            raise LlmqError(f"{path} is not a .gguf file or a folder holding one.")
        if kernel is not None:
            raise ConfigError(f"kernel= applies to GPTQ/AWQ folders; {path} is a GGUF file.")
        tok = cls.load_tokenizer(f)
        if llama_cpp_installed():
            from llmq.eval.llamacpp import LlamaCppLM

            return LlamaCppLM(f), tok
        from transformers import AutoModelForCausalLM

        from llmq.models import strip_quantization_config

        model = AutoModelForCausalLM.from_pretrained(f.parent, gguf_file=f.name, dtype="auto").eval()
        strip_quantization_config(model)
        model.llmq_runtime = "transformers (dequantized GGUF)"
        return model, tok

    @classmethod
    def generate(cls, model: Any, tokenizer: Any, prompt: str, max_new_tokens: int = 24) -> str:
        if hasattr(model, "complete"):
            return model.complete(prompt, max_new_tokens)
        return super().generate(model, tokenizer, prompt, max_new_tokens)

    @classmethod
    def bench_runner(cls, path: Path, *, device: str, threads: int | None) -> Any:
        """llama.cpp itself (``LlamaCppRunner``): benching a dequantized GGUF on transformers would
        measure the wrong runtime, so a missing llama-cpp-python is an error here, not a fallback."""
        if not llama_cpp_installed():
            raise MissingDependencyError("Benchmarking a .gguf on llama.cpp", ["llama-cpp-python"], EXTRA)
        from llmq.eval.llamacpp import LlamaCppRunner

        return LlamaCppRunner(str(_gguf_in(Path(path))), device=device, threads=threads)

    @classmethod
    def estimate(cls, profile: Any, scheme: Any, config: Any, device: str) -> Any:
        return estimate_size(profile, scheme.name)

    @classmethod
    def card_facts(cls, meta: dict, repo: str) -> Any:
        from llmq.backends.base import CardFacts

        qc = meta.get("quantization_config") or {}
        f = qc.get("file") or "model.gguf"
        ftype = qc.get("ftype") or ""
        types = qc.get("tensor_types") or {}
        python = ("from llama_cpp import Llama\n\n"
                  f'llm = Llama.from_pretrained("{repo}", filename="{f}", n_ctx=4096)  # or Llama(model_path="{f}")\n'
                  'print(llm("The capital of France is", max_tokens=20)["choices"][0]["text"])')
        note = (f"llama.cpp CLI: `llama-cli -hf {repo} -p \"The capital of France is\" -n 20` (or `llama-cli -m {f}`). "
                f"transformers can read it too (`from_pretrained(\"{repo}\", gguf_file=\"{f}\")`), dequantized to "
                "full precision, losing the size and speed benefit.")
        hardware = ("llama.cpp's kernels: CPU (x86 AVX2/AVX-512, ARM NEON) and, in GPU builds of llama.cpp, CUDA/Metal/"
                    "Vulkan. Tensor types follow llama.cpp's per-tensor rules, so the file mixes types"
                    + (f" ({', '.join(f'{k}: {v}' for k, v in types.items())} tensors)" if types else "")
                    + "; K-quants need rows divisible by 256 and fall back to other types where they are not.")
        return CardFacts(
            packages="llama-cpp-python", python=python,
            tags=["gguf", "llama.cpp", ftype.lower()] + (["imatrix"] if qc.get("imatrix") else []),
            hardware=hardware, note=note,
            serve=f"ollama create my-model -f Modelfile && ollama run my-model\n# or: llama-server -m {f}",
            serve_note=f"The `Modelfile` next to `{f}` is Ollama's (`FROM ./{f}`); Ollama reads the chat template "
                       "from the GGUF. llmq's own tests run llama-cpp-python, not Ollama.",
            library_name="gguf", usage_title="llama.cpp / llama-cpp-python", serve_title="Ollama / llama-server")
