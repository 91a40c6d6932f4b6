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

from llmq.config import SchemeConfig, _check_choice
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


def quantize_model(model_dir: Path, out_dir: Path, config: GGUFConfig, *, name: str | None = None,
                   scheme: str | None = None, overwrite: bool = False, progress: bool = False,
                   imatrix: dict[str, Any] | None = None) -> GGUFResult:
    """Convert ``model_dir`` (an HF folder) with llama.cpp's converter, quantize to ``config.ftype``
    (with an importance matrix when ``config.calibration`` is set, or the ``imatrix`` given), and write
    ``out_dir/<name>.gguf`` + ``Modelfile`` + ``llmq.json`` through a temp folder renamed at the end."""
    from llmq.io import atomic_dir, write_json

    scheme = scheme or f"gguf-{config.ftype.lower()}"
    check_environment(scheme)
    model_dir, out_dir = Path(model_dir), Path(out_dir)
    arch = check_model(model_dir, scheme)
    if config.calibration is not None:
        from llmq import calibration as cal

        cal.validate_source(config.calibration)
    name = name or f"{model_dir.name}-{config.ftype}"
    timings: dict[str, float] = {}
    with atomic_dir(out_dir, overwrite=overwrite) as tmp, tempfile.TemporaryDirectory(prefix="llmq-gguf-") as work:
        t = time.perf_counter()
        f32 = Path(work) / f"model-{config.outtype}.gguf"
        conv = convert(model_dir, f32, config.outtype)
        timings["convert_s"] = time.perf_counter() - t
        calib_record = None
        if imatrix is None and config.calibration is not None:
            t = time.perf_counter()
            imatrix, calib_record = compute_imatrix(model_dir, config.calibration, n_samples=config.n_samples,
                                                    seqlen=config.seqlen, seed=config.seed, progress=progress)
            timings["imatrix_s"] = time.perf_counter() - t
        elif imatrix is not None:
            calib_record = {"source": "imatrix given by caller", "tensors": len(imatrix)}
        t = time.perf_counter()
        dst = tmp / f"{name}.gguf"
        quantize_file(f32, dst, config.ftype, imatrix=imatrix, output_tensor_type=config.output_tensor_type,
                      token_embedding_type=config.token_embedding_type, threads=config.threads)
        timings["quantize_s"] = time.perf_counter() - t
        write_modelfile(tmp, dst.name)
        types = tensor_types(dst)
        record = {
            "scheme": scheme, "format": "gguf", "file": dst.name, "ftype": config.ftype,
            "config": config.to_dict(), "calibration": calib_record, "imatrix": calib_record is not None,
            **conv, "source_architecture": arch, "tensor_types": type_counts(types),
            "output_tensor": types.get("output.weight"), "token_embd_tensor": types.get("token_embd.weight"),
            "bytes": dst.stat().st_size, "timings": timings, "versions": versions(),
        }
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


def card_facts(record: dict[str, Any], repo_id: str | None = None) -> dict[str, Any]:
    """What the model card says for a GGUF output: packages, how to run, limitations, tags."""
    f = record.get("file", "model.gguf")
    repo = repo_id or "<user>/<repo>"
    return {
        "pip": ["llama-cpp-python"],
        "library_name": "gguf",
        "tags": ["gguf", "llama.cpp", record.get("ftype", "").lower(), "llmq"]
        + (["imatrix"] if record.get("imatrix") else []),
        "usage": {
            "llama.cpp": f"llama-cli -m {f} -p \"Hello\" -n 64\n# or: llama-server -m {f}",
            "llama-cpp-python": (
                "from llama_cpp import Llama\n"
                f"llm = Llama(model_path=\"{f}\", n_ctx=4096)\n"
                "print(llm(\"Hello\", max_tokens=64)[\"choices\"][0][\"text\"])"
            ),
            "ollama": f"ollama create my-model -f Modelfile   # Modelfile: FROM ./{f}\nollama run my-model",
            "hub": f"llama-cli -hf {repo}  # or Llama.from_pretrained(\"{repo}\", filename=\"{f}\")",
            "transformers": (f"AutoModelForCausalLM.from_pretrained(\"{repo}\", gguf_file=\"{f}\")"
                             "  # dequantizes to full precision"),
        },
        "limitations": [
            "GGUF runs in llama.cpp and tools built on it (llama-cpp-python, Ollama, LM Studio); transformers "
            "and vLLM dequantize or support only some types.",
            "Tensor types follow llama.cpp's per-type rules: mixed precision inside one file "
            f"({', '.join(f'{k}: {v}' for k, v in record.get('tensor_types', {}).items())}).",
            "K-quants need rows divisible by 256; llama.cpp falls back to Q5_0/Q8_0-style types where they are not.",
        ],
    }


ADVISOR_ROLE = (
    "GGUF (llama.cpp): the CPU/edge format; llama.cpp's kernels decode several times faster than "
    "transformers on CPU and Q4_K_M/Q5_K_M keep more accuracy per byte than scale-only 4-bit. Runs in "
    "llama.cpp, Ollama, LM Studio; not a transformers/vLLM GPU serving format."
)
#: the precision each scheme stores its main weights at, for the advisor's tables
PRECISION = {"gguf-q8_0": "int8 (Q8_0)", "gguf-q6_k": "6-bit K-quant", "gguf-q5_k_m": "5-bit K-quant mix",
             "gguf-q4_k_m": "4-bit K-quant mix", "gguf-q4_0": "4-bit (Q4_0)"}


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
