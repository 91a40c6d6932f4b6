"""GPTQ and AWQ through GPTQModel, the maintained successor of AutoGPTQ/AutoAWQ that transformers
itself uses to load both formats. Calibrated; saved in GPTQModel's format, loaded back through
transformers (``quant_method`` "gptq" / "awq")."""

from __future__ import annotations

import math
import os
import re
import sys
from pathlib import Path
from typing import Any

from dataclasses import dataclass
from typing import ClassVar

from llmq.backends.base import (VLLM_NOTE, Backend, CardFacts, Scheme, block_shapes, model_type, package_version,
                                transformers_snippet)
from llmq.backends.compressed import FORMAT as CT_FORMAT, export_via_folder
from llmq.backends.gptqmodel_cpu import ensure_cpu_workers, fix_mmap_threshold, prebuild_pack_kernel
from llmq.config import CalibratedConfig, check_choice
from llmq.errors import ConfigError, MissingDependencyError
from llmq.models import excluded_modules, linear_shapes


@dataclass(kw_only=True)
class GPTQConfig(CalibratedConfig):
    """GPTQ through GPTQModel. ``desc_act`` (act-order) helps accuracy but slows some kernels;
    ``act_group_aware`` is GPTQModel's reordering that keeps groups contiguous (its default)."""

    formats: ClassVar[tuple[str, ...]] = (CT_FORMAT,)
    desc_act: bool = False
    act_group_aware: bool = True
    damp_percent: float = 0.05

    def validate(self) -> None:
        super().validate()
        if not (0 < self.damp_percent < 1):
            raise ConfigError(f"damp_percent must be in (0, 1), got {self.damp_percent!r}.")
        if self.desc_act and self.act_group_aware:
            raise ConfigError("desc_act=True and act_group_aware=True are exclusive; set act_group_aware=False.")
        check_ct_packable(self)
        if self.format == CT_FORMAT and self.desc_act:
            raise ConfigError("format='compressed-tensors' stores no act-order index (compressed-tensors 0.20 dropped "
                              "g_idx): use desc_act=False (act_group_aware, the default, keeps groups in order).")


def check_ct_packable(cfg: Any) -> None:
    """compressed-tensors' pack-quantized layout as vLLM serves it: 4- or 8-bit codes."""
    if cfg.format == CT_FORMAT and cfg.bits not in (4, 8):
        raise ConfigError(f"format='compressed-tensors' packs 4- or 8-bit weights for vLLM; bits={cfg.bits} is not one.")


@dataclass(kw_only=True)
class AWQConfig(CalibratedConfig):
    """AWQ through GPTQModel, GEMM format (what vLLM and transformers load)."""

    allowed_bits: ClassVar[tuple[int, ...]] = (4,)
    formats: ClassVar[tuple[str, ...]] = ("gemm", "gemv", CT_FORMAT)  # compressed-tensors: written from GEMM
    sym: bool = False
    format: str = "gemm"

    def validate(self) -> None:
        super().validate()
        check_choice("format", self.format, self.formats)
        if self.group_size == -1:
            raise ConfigError("AWQ needs a group size (32, 64 or 128); -1 is not supported.")

def grouped_size(profile: Any, scheme: str, bits: int, group_size: int, *, g_idx: bool,
                 kept_dtype: str = "bfloat16", skip: tuple[str, ...] = ()) -> Any:
    """GPTQ (``g_idx=True``) and AWQ GEMM packing: ``qweight`` int32 words of ``32/bits`` codes, per
    group fp16 ``scales`` and packed int32 ``qzeros``, GPTQ's int32 ``g_idx`` per input feature; only
    Linears inside the decoder blocks are quantized, the rest is kept at ``kept_dtype``."""
    from llmq.sizing import BYTES, SizeEstimate, base_tensors, header_bytes, kept_params, selected_linears

    lins, _ = selected_linears(profile, True, skip)
    q = sum(l.numel for l in lins)
    packed = scales = zeros = gidx = 0
    for l in lins:
        g = l.in_features if group_size in (-1, None) else group_size
        groups = math.ceil(l.in_features / g)
        packed += math.ceil(l.in_features * bits / 32) * l.out_features * 4
        scales += groups * l.out_features * 2
        zeros += groups * math.ceil(l.out_features * bits / 32) * 4
        gidx += l.in_features * 4 if g_idx else 0
    kept = kept_params(profile, q) * BYTES[kept_dtype]
    n = base_tensors(profile) + (len(profile.linears) - len(lins)) + (4 if g_idx else 3) * len(lins)
    hdr = header_bytes(n)
    over = scales + zeros + gidx
    return SizeEstimate(scheme, f"int{bits}", packed + over + kept + hdr, q, kept_params(profile, q), kept_dtype,
                        8 * (packed + over) / q if q else None,
                        {f"int{bits} codes": packed, "scales": scales, "zeros": zeros, "g_idx": gidx,
                         f"kept ({kept_dtype})": kept, "header": hdr})


def fitting_group_sizes(in_features: list[int]) -> list[int]:
    g = 0
    for n in in_features:
        g = math.gcd(g, n)
    return [s for s in (256, 128, 64, 32, 16) if g and g % s == 0]


_TREE = {  # advisor preference per situation, lower first
    "gptq-int4": {"cpu": 4, "gpu_fits": 5, "gpu_8bit": 3, "gpu_4bit": 1},
    "gptq-int8": {"cpu": 3, "gpu_fits": 3, "gpu_8bit": 1, "gpu_4bit": 4},
    "gptq-int3": {"cpu": 9, "gpu_fits": 9, "gpu_8bit": 6, "gpu_4bit": 6},
}
_ROLE = {
    4: ("4", "4-bit for serving (GPTQ: vLLM, TGI, transformers)"),
    8: ("8", "8-bit for max accuracy, calibrated, serving kernels (GPTQ)"),
    3: ("3", "3-bit, below the rule of thumb's table: measure before use"),
}


def _method(meta: dict) -> str:
    return "awq" if str(meta.get("scheme", "")).startswith("awq") else "gptq"


def kept_to_bf16(hf: Any) -> None:
    """Cast the fp32 tensors AWQ did not quantize (embeddings, norms, an untied head) to bf16 before
    saving. llmq runs AWQ's searches in fp32 on CPU (``quantize_dtype``), but the folder runs in
    bf16 (GPTQModel's AVX-512 AWQ kernel is fast only there) and the 28M-parameter fp32 embedding
    made SmolLM2's folder 170.7 MB against GPTQ's 114.6 MB. The packed layers are untouched."""
    import torch
    from gptqmodel.nn_modules.qlinear import BaseQuantLinear

    cast = False
    for mod in hf.modules():
        if isinstance(mod, BaseQuantLinear):
            continue
        for name, p in list(mod.named_parameters(recurse=False)):
            if p.dtype == torch.float32:
                # a new Parameter, not ``p.data =``: with offload_to_disk some are tensor subclasses
                # (Gemma-2's tied embedding) whose data cannot be swapped for a plain tensor
                setattr(mod, name, torch.nn.Parameter(p.detach().to(torch.bfloat16), requires_grad=False))
                cast = True
    if cast:
        hf.config.dtype = torch.bfloat16


_GEMMA3_AWQ = ("GPTQModel 7.7's AWQ scale search calls Gemma-3's rotary embedding without its layer_type "
               "(Gemma-3 has one RoPE per attention type) and crashes")
#: (GPTQModel version prefix, method, model_type) -> why GPTQModel cannot quantize it: crashes found by
#: the architecture matrix (tests/acceptance/test_architectures.py), refused before any weight loads
BROKEN = {
    ("7.7.", "awq", "gemma3_text"): _GEMMA3_AWQ,
    ("7.7.", "awq", "gemma3"): _GEMMA3_AWQ,
    ("7.7.", "awq", "phi3"): "GPTQModel 7.7's AWQ kills the process packing Phi-3's fused qkv_proj/gate_up_proj "
                             "(KeyError 'q_zeros')",
    ("7.7.", "gptq", "phi3"): "the folder GPTQModel 7.7 writes for Phi-3 (fused qkv_proj/gate_up_proj) crashes "
                              "its CPU kernel at the first forward (IndexError on g_idx)",
}


#: GPTQ's per-column solve does not grow with the calibration tokens: in bench_scale's 7B run (16 x 512
#: tokens, 118 s per layer) GPTQModel's own per-module log put the forwards at ~36% of a layer and the
#: solve at ~64%, worth ~14,600 tokens of forward; the time model counts it so (AWQ's searches are forwards)
GPTQ_SOLVE_TOKENS = 14_600


class GPTQModelBackend(Backend):
    name = "gptqmodel"
    requires = (("gptqmodel", "gptqmodel"), ("optimum", "optimum"))
    extra = "gptq"
    needs_calibration = True
    quant_methods = ("gptq", "awq")
    exports = (CT_FORMAT,)
    layer_types_note = ("GPTQModel 7.7 on GPT-2's Conv1D layers: AWQ crashes the process and GPTQ writes a "
                        "folder transformers cannot load")
    #: GPTQModel's in-memory model right after ``quantize`` is not in an inference state on CPU (it
    #: generated garbage where the saved folder, reloaded, answers correctly)
    runs_in_memory = False
    schemes = tuple(
        Scheme(f"gptq-int{b}", "gptqmodel", GPTQConfig, {"bits": b}, b,
               f"GPTQ {b}-bit weights (GPTQModel), calibrated", *_ROLE[b], True, _TREE[f"gptq-int{b}"],
               {4: "w4a16", 8: "w8a16"}.get(b, ""))
        for b in (4, 8, 3)
    ) + (
        Scheme("awq-int4", "gptqmodel", AWQConfig, {"bits": 4}, 4, "AWQ 4-bit weights, GEMM format (GPTQModel), calibrated",
               "4", "4-bit for serving (AWQ: vLLM, TGI, transformers)", True,
               {"cpu": 5, "gpu_fits": 4, "gpu_8bit": 2, "gpu_4bit": 0}, "w4a16"),
    )

    @property
    def method(self) -> str:
        return "awq" if isinstance(self.config, AWQConfig) else "gptq"

    def quantized_linears(self, config: Any, *, trust_remote_code: bool = False) -> dict[str, tuple[int, int]]:
        return block_shapes(config, tuple(self.config.skip_modules), trust_remote_code=trust_remote_code)

    def unsupported(self, config: Any, *, trust_remote_code: bool = False) -> str | None:
        """Beyond the layer types: the architectures this GPTQModel version crashes on (``BROKEN``)."""
        reason = super().unsupported(config, trust_remote_code=trust_remote_code)
        if reason:
            return reason
        version = package_version("gptqmodel") or ""
        for (prefix, method, mtype), why in BROKEN.items():
            if version.startswith(prefix) and method == self.method and getattr(config, "model_type", None) == mtype:
                return f"{self.scheme.name} on {model_type(config)}: {why}"
        return None

    def misfit(self, config: Any, *, trust_remote_code: bool = False) -> str | None:
        """Kernels (and AWQ's packing) need ``in_features % group_size == 0``: refused now, not after
        minutes of calibration, naming the layers and the group sizes that fit."""
        gs = self.config.group_size
        if gs == -1:
            return None
        shapes = self.quantized_linears(config, trust_remote_code=trust_remote_code)
        bad = {n: s[0] for n, s in shapes.items() if s[0] % gs}
        if not bad:
            return None
        widths = sorted(set(bad.values()))
        example = next(iter(bad))
        fits = fitting_group_sizes([s[0] for s in shapes.values()])
        hint = f"group sizes that fit this model: {', '.join(map(str, fits))}" if fits else "use group_size=-1"
        return (f"group_size={gs} does not divide in_features {widths} of {len(bad)} layers "
                f"(e.g. {example}); {hint} (--group-size).")

    def gptqmodel_config(self, config: Any) -> Any:
        from gptqmodel import QuantizeConfig
        from gptqmodel.quantization import FORMAT, METHOD

        c = self.config
        skip = excluded_modules(config, list(linear_shapes(config)), c.skip_modules)
        dynamic = {f"-:^{re.escape(n)}$": {} for n in skip if n != "lm_head"} or None
        if isinstance(c, AWQConfig):
            return QuantizeConfig(
                bits=c.bits, group_size=c.group_size, sym=c.sym, quant_method=METHOD.AWQ,
                format=FORMAT.GEMV if c.format == "gemv" else FORMAT.GEMM, dynamic=dynamic,  # compressed-tensors: from GEMM
                offload_to_disk=True,
            )
        return QuantizeConfig(
            bits=c.bits, group_size=c.group_size, sym=c.sym, desc_act=c.desc_act,
            act_group_aware=c.act_group_aware, damp_percent=c.damp_percent, dynamic=dynamic,
            offload_to_disk=True,
        )

    def post_quant_kernel(self, device: str) -> str:
        """The kernel GPTQModel packs the fresh weights with. On CUDA its ``auto`` choice for GPTQ on
        Hopper is Machete, which downloads CUTLASS from GitHub at first use (fails offline); the
        torch kernel packs everywhere and does not touch the network."""
        if device.startswith("cuda") and self.method == "gptq":
            return "torch"
        return "auto"

    def quantize_dtype(self, device: str) -> Any:
        """fp32 for AWQ on CPU: GPTQModel's bf16 default there ruins AWQ's searches (see
        ``gptqmodel_patches``); fp32 needs the packing patch, so fall back to GPTQModel's choice
        where the patch does not apply. GPU and GPTQ: GPTQModel's own choice."""
        import torch

        if self.method == "awq" and device == "cpu":
            from llmq.backends import gptqmodel_patches

            if gptqmodel_patches.apply():
                return torch.float32
        return None

    def quantize(self, model_dir: Path, calibration: Any, device: str) -> Any:
        ensure_cpu_workers()
        from llmq.backends import gptqmodel_patches

        quiet = gptqmodel_patches.quiet_logs()  # before the import: a log file gets one line per layer
        from gptqmodel import GPTQModel
        from transformers import AutoConfig

        gptqmodel_patches.redirect_logs()
        qcfg = self.gptqmodel_config(AutoConfig.from_pretrained(model_dir))
        if device == "cpu" and self.method == "gptq":
            prebuild_pack_kernel()
            fix_mmap_threshold()
        dtype = self.quantize_dtype(device)
        kwargs = {"dtype": dtype} if dtype is not None else {}
        model = GPTQModel.load(str(model_dir), qcfg, device=device, **kwargs)
        hooks = gptqmodel_patches.layer_progress(model.model, self.scheme.name) if quiet else []
        try:
            model.quantize(calibration.as_gptqmodel(), batch_size=1, backend=self.post_quant_kernel(device))
        finally:
            for h in hooks:
                h.remove()
        return model

    def save(self, model: Any, tokenizer: Any, out: Path) -> None:
        import contextlib
        import io
        import sys

        if self.method == "awq":
            kept_to_bf16(model.model)
        buf = io.StringIO()
        with contextlib.redirect_stdout(buf):  # GPTQModel's writer prints every config file it saved
            model.save(str(out))
        for line in buf.getvalue().splitlines():  # keep its warnings and errors
            if line.strip("\r ").startswith(("WARN", "ERROR", "CRITICAL")):
                print(line.strip("\r "), file=sys.stderr)
        tokenizer.save_pretrained(out)
        for f in out.glob("*.bin"):
            f.unlink()
        forget_offload(out)

    def export(self, model: Any, tokenizer: Any, out: Path, fmt: str) -> dict[str, Any]:
        """The GPTQ/AWQ folder ``save`` writes, converted (:func:`export_gptq_folder`)."""
        return export_via_folder(self.save, model, tokenizer, out)

    def quantization_config(self, model: Any) -> dict | None:
        qc = model.quantize_config.to_dict()
        _drop_offload(qc)
        return qc

    # -- load ---------------------------------------------------------------------------------
    @classmethod
    def load_dtype(cls, quantization_config: dict, device: str, dtype: Any) -> Any:
        """An fp32 AWQ folder (llmq quantizes AWQ in fp32 on CPU, see ``quantize_dtype``) runs in
        bf16 on CPU unless ``dtype`` says otherwise: GPTQModel's AVX-512 AWQ kernel is fast only
        with bf16 activations (SmolLM2 demo, ``scripts/bench_cpu_speed.py``, ``eval/bench_cpu_speed.json``:
        run in fp32 it decoded at 0.06x fp32 transformers, in bf16 at 1.45x)."""
        if dtype == "auto" and str(device).startswith("cpu") and quantization_config.get("quant_method") == "awq":
            import torch

            return torch.bfloat16
        return dtype

    @classmethod
    def load_kwargs(cls, path: Path, quantization_config: dict, device: str, kernel: str | None) -> dict[str, Any]:
        """``kernel`` picks GPTQModel's kernel (``"marlin"``, ``"triton"``, ``"torch"``; default auto)."""
        method = quantization_config.get("quant_method")
        missing = cls.missing_packages()
        if missing:
            raise MissingDependencyError(f"Loading a {str(method).upper()} model", missing, "gptq")
        ensure_cpu_workers()
        if kernel is None and method == "gptq":
            kernel = offline_safe_gptq_kernel(quantization_config, device)
        if kernel is None:
            return {}
        from transformers import AwqConfig, GPTQConfig as HfGPTQConfig

        hf_cls = HfGPTQConfig if method == "gptq" else AwqConfig
        return {"quantization_config": hf_cls.from_dict({**quantization_config, "backend": kernel})}

    # -- advisor and card ---------------------------------------------------------------------
    @classmethod
    def estimate(cls, profile: Any, scheme: Scheme, config: Any, device: str) -> Any:
        """AWQ keeps what it does not quantize in bf16 (``kept_to_bf16``), as GPTQ does."""
        skip = tuple(config.skip_modules)
        if isinstance(config, AWQConfig):
            return grouped_size(profile, scheme.name, config.bits, config.group_size, g_idx=False,
                                kept_dtype="bfloat16", skip=skip)
        return grouped_size(profile, scheme.name, config.bits, config.group_size, g_idx=True, skip=skip)

    @classmethod
    def cost_features(cls, profile: Any, scheme: Scheme, config: Any) -> Any:
        """GPTQModel with ``offload_to_disk`` holds one layer (fp32 for AWQ on CPU, GPTQModel's
        dtype otherwise: counted at 4 bytes), its Hessians (in_features^2 fp32 per Linear),
        every calibration token's hidden state; time grows with parameters x tokens."""
        from llmq.cost import calibration_bytes, streamed

        tokens = config.n_samples * config.seqlen
        hess = sum(4 * l.in_features ** 2 for l in profile.linears
                   if l.in_layers and ".layers.0." in f".{l.name}")
        awq = isinstance(config, AWQConfig)
        feats = streamed(profile, 4, 0, calibration_bytes(profile, tokens) + hess,
                         work=profile.parameters * (tokens + (0 if awq else GPTQ_SOLVE_TOKENS)))
        feats.half_matmuls = not awq  # GPTQ calibrates in the checkpoint's dtype; AWQ in fp32 on CPU
        return feats

    @classmethod
    def card_facts(cls, meta: dict, repo: str) -> CardFacts:
        key = _method(meta)
        version = (meta.get("versions") or {}).get("gptqmodel")
        serve: str | None = f"vllm serve {repo}"
        if key == "awq" and (meta.get("config") or {}).get("format") == "gemv":
            serve = None
            serve_note = ("vLLM serves AWQ's GEMM format only; this folder uses GEMV. Re-quantize with "
                          "`--set format=\"gemm\"` (llmq's default) to serve it with vLLM.")
        else:
            serve_note = f"vLLM reads the {key.upper()} settings from config.json. " + VLLM_NOTE
        hardware = {
            "gptq": "GPTQ kernels: the fast ones need an NVIDIA GPU (vLLM's Marlin kernels need compute capability "
                    "8.0+, older GPUs use slower GPTQ kernels); on CPU GPTQModel uses a torch kernel, whose speed "
                    "depends on the CPU (see Evaluation when it was measured on CPU).",
            "awq": "AWQ kernels: the fast ones need an NVIDIA GPU (vLLM's AWQ kernels need Turing, compute "
                   "capability 7.5, or newer); on CPU GPTQModel uses a torch kernel, whose speed depends on the CPU.",
        }[key]
        return CardFacts(
            packages={"gptq": "transformers gptqmodel optimum", "awq": "transformers gptqmodel"}[key],
            python=transformers_snippet(repo), tags=[key], hardware=hardware,
            note=(f"Made with GPTQModel {version}; transformers loads {key.upper()} folders "
                  "through GPTQModel, which picks a GPU kernel when one fits and a torch kernel on CPU."),
            serve=serve, serve_note=serve_note)


#: what the saved configs say about disk offload: llmq quantizes with GPTQModel's ``offload_to_disk``
#: (each layer read from the checkpoint when its turn comes, so a 7B model fits a small RAM), a
#: quantize-time setting whose temporary folder means nothing to whoever loads the output
_NO_OFFLOAD = {"offload_to_disk": False, "offload_to_disk_path": None}


def forget_offload(out: Path) -> None:
    """Rewrite config.json's ``quantization_config`` and quantize_config.json without the offload
    record (same key order and layout as GPTQModel writes them): the folder's bytes do not depend
    on where the quantization offloaded its layers."""
    import json

    for name, key in (("config.json", "quantization_config"), ("quantize_config.json", None)):
        f = Path(out) / name
        if not f.is_file():
            continue
        raw = f.read_text(encoding="utf-8")
        data = json.loads(raw)
        if _drop_offload(data.get(key) if key else data):
            f.write_text(json.dumps(data, indent=2) + ("\n" if raw.endswith("\n") else ""), encoding="utf-8")


def _drop_offload(d: Any) -> bool:
    """Set the offload record to "none" wherever it sits in ``d`` (GPTQModel nests it under
    ``meta``); True when something changed."""
    if not isinstance(d, dict):
        return False
    changed = False
    for k, v in d.items():
        if k in _NO_OFFLOAD and v != _NO_OFFLOAD[k]:
            d[k] = _NO_OFFLOAD[k]
            changed = True
        elif isinstance(v, dict):
            changed = _drop_offload(v) or changed
    return changed


def offline_safe_gptq_kernel(qc: dict, device: str) -> str | None:
    """On Hopper GPUs GPTQModel's auto kernel is Machete, which downloads CUTLASS from GitHub the
    first time (measured: URLError on an offline H100, eval/gpu/h100_gpu_check.json). Marlin builds
    from sources GPTQModel ships, so pick it there unless the user provides CUTLASS."""
    if not device.startswith("cuda") or os.environ.get("GPTQMODEL_CUTLASS_DIR"):
        return None
    import torch

    if not torch.cuda.is_available() or torch.cuda.get_device_capability()[0] < 9:
        return None
    return "marlin" if qc.get("bits") in (4, 8) and qc.get("sym", True) else None
