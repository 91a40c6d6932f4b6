"""compressed-tensors: the checkpoint format vLLM serves quantized models from (and transformers
loads on any device), written from llmq's own quantized weights.

* :func:`write_compressed` is the one writer. A plugin hands it a dense transformers model (the
  layers it did not quantize, as its output keeps them) and, per quantized Linear, the
  compressed-tensors arguments and the exact numbers llmq quantized with (:class:`LayerQuant`:
  the dequantized weight, its scales and zero points, a static activation scale). The writer
  does what llm-compressor does after calibrating, with compressed-tensors' own API:
  ``apply_quantization_config``, the scales and zero points set on the modules,
  ``ModelCompressor.from_pretrained_model(...).compress_model`` (which re-derives the integer or
  FP8 codes from those scales and packs them), ``save_pretrained`` and ``update_config``. No code
  is re-chosen: the folder holds llmq's codes and scales (tests compare them bit for bit).
* :class:`CompressedTensorsBackend` is the plugin that owns such folders (``quant_method``
  "compressed-tensors"): it loads them with plain ``from_pretrained`` (transformers' own
  compressed-tensors support) and writes their model card, whose usage is ``vllm serve``.

Which llmq schemes export here (``format="compressed-tensors"``) is each plugin's call
(``Backend.exports``): int8-dynamic and int8-static (torchao, through :func:`export_torchao`),
gptq-int4/gptq-int8/awq-int4 and qat-int4 (their GPTQ/AWQ folder, through :func:`export_gptq_folder`)
and fp8 (``llmq.backends.fp8``), whose only format this is. The converters live here, beside the
writer, so each plugin's module stays about its own method.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from llmq.backends.base import VLLM_NOTE, Backend, CardFacts, transformers_snippet
from llmq.errors import ConfigError, LlmqError

FORMAT = "compressed-tensors"
#: what ``llmq advise --serve vllm`` and the card name each compressed-tensors layout
KINDS = {"int-quantized": "W8A8 (int8)", "float-quantized": "FP8", "pack-quantized": "W4A16 / W8A16 (packed)"}
TP_CANDIDATES = (1, 2, 4, 8)


@dataclass
class LayerQuant:
    """One quantized Linear as llmq quantized it. ``weights``/``input_activations``: compressed-
    tensors ``QuantizationArgs`` fields (None: weight-only). ``weight``: the dequantized weight
    (``scale * (q - zero_point)``, in float32 so every code is recovered exactly), ``[out, in]``."""

    weights: dict[str, Any]
    weight: Any
    weight_scale: Any
    weight_zero_point: Any = None
    input_activations: dict[str, Any] | None = None
    input_scale: Any = None
    input_zero_point: Any = None


def dense_model(config: Any, dtype: Any, state: Mapping[str, Any], quantized: set[str]) -> Any:
    """A plain transformers model of ``config`` (its quantization_config dropped) at ``dtype``,
    holding ``state`` (every tensor but the weights of the ``quantized`` Linears, which the writer
    sets). Built without random initialisation; any other missing or unexpected tensor is an error."""
    import torch
    from transformers import AutoModelForCausalLM

    cfg = copy.deepcopy(config)
    if hasattr(cfg, "quantization_config"):
        del cfg.quantization_config
    try:
        from transformers.initialization import no_init_weights
    except ImportError:  # pragma: no cover - older transformers: random init, then overwritten
        import contextlib

        no_init_weights = contextlib.nullcontext
    with no_init_weights():
        model = AutoModelForCausalLM.from_config(cfg, dtype=dtype)
    missing, unexpected = model.load_state_dict(dict(state), strict=False)
    tied = set(getattr(model, "all_tied_weights_keys", None) or {})
    missing = [k for k in missing if k not in tied and k.removesuffix(".weight") not in quantized]
    if missing or unexpected:
        raise LlmqError(f"Cannot rebuild the model for compressed-tensors: missing {missing[:3]}, "
                        f"unexpected {unexpected[:3]}.")
    model.tie_weights()
    model.eval()
    return model.to(torch.device("cpu"))


def write_compressed(model: Any, layers: Mapping[str, LayerQuant], out: Path, tokenizer: Any = None) -> dict:
    """Write ``model`` (dense; see :func:`dense_model`) with ``layers`` quantized as given into
    ``out`` as a compressed-tensors folder; returns llmq.json's entries (the ``quantization_config``
    written, ``serving``). One config group per distinct scheme; Linears not in ``layers`` (lm_head,
    skipped ones) are listed in ``ignore``, as vLLM requires of every unquantized Linear."""
    import torch
    from compressed_tensors.compressors import ModelCompressor
    from compressed_tensors.quantization import (QuantizationArgs, QuantizationConfig, QuantizationScheme,
                                                 QuantizationStatus, apply_quantization_config)

    if not layers:
        raise LlmqError("Nothing to export: no Linear is quantized.")
    groups: dict[str, list[str]] = {}
    args: dict[str, tuple] = {}
    for name, lq in layers.items():
        key = repr((sorted(lq.weights.items()), sorted((lq.input_activations or {}).items())))
        groups.setdefault(key, []).append(name)
        args[key] = (lq.weights, lq.input_activations)
    single = len(groups) == 1
    config_groups = {
        f"group_{i}": QuantizationScheme(
            targets=["Linear"] if single else names, weights=QuantizationArgs(**args[key][0]),
            input_activations=QuantizationArgs(**args[key][1]) if args[key][1] else None)
        for i, (key, names) in enumerate(groups.items())}
    ignore = [n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) and n not in layers]
    qcfg = QuantizationConfig(config_groups=config_groups, ignore=ignore,
                              quantization_status=QuantizationStatus.FROZEN)
    apply_quantization_config(model, qcfg, show_progress=False)
    with torch.no_grad():
        for name, lq in layers.items():
            mod = model.get_submodule(name)
            mod.weight = torch.nn.Parameter(lq.weight.float(), requires_grad=False)
            for attr in ("weight_scale", "weight_zero_point", "input_scale", "input_zero_point"):
                _set_qparam(mod, attr, getattr(lq, attr))
            mod.quantization_status = QuantizationStatus.FROZEN
    compressor = ModelCompressor.from_pretrained_model(model)
    compressor.compress_model(model)
    model.save_pretrained(out)
    compressor.update_config(str(out))
    if tokenizer is not None:
        tokenizer.save_pretrained(out)
    from llmq.models import read_json

    qc = read_json(Path(out) / "config.json")["quantization_config"]
    QuantizationConfig.model_validate(qc)  # what vLLM and transformers parse it with
    return {"quantization_config": qc, "serving": serving_facts(model.config, layers)}


def export_peak_bytes(profile: Any, quantized_bytes: float, dtype_bytes: float) -> float:
    """What :func:`write_compressed` holds at once, by formula: the quantized model (or GPTQ/AWQ
    folder) it converts from (``quantized_bytes``), a float32 copy of every quantized Linear's weight
    (the writer re-derives the codes from them, all before compressing) and the dense model's other
    tensors at dtype. About 5 bytes per parameter: a 7B model needs ~35 GB, so ``llmq run`` refuses
    an export that cannot fit instead of being killed half way."""
    lin = sum(l.numel for l in profile.linears if l.in_layers)
    return float(quantized_bytes) + 4.0 * lin + (profile.parameters - lin) * dtype_bytes


def _set_qparam(mod: Any, attr: str, value: Any) -> None:
    """Set a qparam ``apply_quantization_config`` created, keeping ``value``'s dtype (llmq's
    scales: torchao's fp32, GPTQ's fp16); a value for a qparam the scheme has none of is an error."""
    import torch

    if value is None:
        return
    old = getattr(mod, attr, None)
    if old is None:
        raise LlmqError(f"compressed-tensors' scheme has no {attr} for this layer.")
    value = value.detach().reshape(old.shape)
    setattr(mod, attr, torch.nn.Parameter(value.to(old.dtype) if "zero_point" in attr else value,
                                          requires_grad=False))


def serving_facts(config: Any, layers: Mapping[str, LayerQuant]) -> dict[str, Any]:
    """The tensor-parallel sizes (of 1, 2, 4, 8) the card offers ``vllm serve``: those dividing
    the attention heads, the KV heads (or a multiple of them, vLLM then replicates KV heads) and the
    MLP width, and keeping each quantization group of a split Linear whole."""
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    heads = getattr(text, "num_attention_heads", None)
    kv = getattr(text, "num_key_value_heads", None) or heads
    inter = getattr(text, "intermediate_size", None)
    head_dim = getattr(text, "head_dim", None) or ((text.hidden_size // heads) if heads else None)
    group = max((lq.weights.get("group_size") or 0) for lq in layers.values())
    sizes = []
    for tp in TP_CANDIDATES:
        if heads and heads % tp or kv and kv % tp and tp % kv or inter and inter % tp:
            continue
        if group and ((inter and inter // tp % group) or (heads and head_dim and heads * head_dim // tp % group)):
            continue
        sizes.append(tp)
    return {"engine": "vllm", "tensor_parallel_sizes": sizes}


def vllm_command(repo: str, meta: dict) -> tuple[str, str]:
    """``vllm serve`` with the tensor-parallel flag, and the note saying which sizes fit."""
    sizes = ((meta.get("serving") or {}).get("tensor_parallel_sizes")) or [1]
    tp = max(sizes)
    note = (f"--tensor-parallel-size N splits the model over N GPUs; this model's shapes allow N in "
            f"{{{', '.join(map(str, sizes))}}} (of 1, 2, 4, 8: heads, KV heads, MLP width and quantization "
            "groups must split evenly). ")
    return f"vllm serve {repo} --tensor-parallel-size {tp}", note


def needs_dequantize(qc: Mapping[str, Any]) -> bool:
    """Whether a folder has asymmetric pack-quantized weight-only groups (see
    ``CompressedTensorsBackend.load_kwargs``)."""
    groups = [g for g in (qc.get("config_groups") or {}).values() if isinstance(g, dict)]
    return any((g.get("weights") or {}).get("symmetric") is False and not g.get("input_activations")
               and (g.get("format") or qc.get("format")) == "pack-quantized" for g in groups)


def layout_of(qc: Mapping[str, Any] | None) -> str:
    """The compressed-tensors layout a ``quantization_config`` names, in words."""
    fmt = (qc or {}).get("format") or ""
    return KINDS.get(fmt, fmt or "compressed-tensors")


# -- converters from llmq's own outputs: torchao W8A8 (int8-dynamic, int8-static) -------------------
def export_torchao(model: Any, tokenizer: Any, out: Path, dtype: Any) -> dict[str, Any]:
    """Write a torchao W8A8 model (int8-dynamic, int8-static) as a compressed-tensors folder
    (``int-quantized``): each ``Int8Tensor`` Linear's int8 codes and fp32 scales as they are,
    with its activations as torchao runs them (per token at run time, or the static per-tensor scale
    and zero point); everything else as the model holds it, at ``dtype``."""
    import torch

    state, layers = {}, {}
    for key, value in model.state_dict().items():
        if type(value).__name__ == "Int8Tensor":
            if not key.endswith(".weight") or isinstance(model.get_submodule(key[:-7]), torch.nn.Embedding):
                raise ConfigError(f"{key} is an int8 embedding: compressed-tensors folders keep embeddings at dtype.")
            layers[key[:-7]] = int8_layer(key[:-7], value)
        else:
            state[key] = value
    return write_compressed(dense_model(model.config, dtype, state, set(layers)), layers, out, tokenizer)


def int8_layer(name: str, w: Any) -> Any:
    """compressed-tensors' view of one torchao ``Int8Tensor`` weight (symmetric int8 per row or
    per tensor) and of the activations its linear quantizes."""
    import torch
    from torchao.quantization import MappingType

    if w.act_pre_scale is not None:
        raise ConfigError(f"{name} divides its input by SmoothQuant scales at run time, which compressed-tensors "
                          "cannot hold: quantize int8-static with smooth_fold=True (folded into the norms).")
    if w.zero_point is not None and bool((w.zero_point != 0).any()):
        raise ConfigError(f"{name} has asymmetric int8 weights; compressed-tensors' W8A8 takes symmetric ones.")
    kw = w.act_quant_kwargs
    if kw is None:
        raise ConfigError(f"{name} is int8 weight-only (float activations); export it with int8 activations or "
                          "keep it float (skip_modules).")
    per_row = w.block_size[0] == 1
    weights = {"num_bits": 8, "type": "int", "symmetric": True, "dynamic": False,
               "strategy": "channel" if per_row else "tensor"}
    sym = kw.mapping_type == MappingType.SYMMETRIC
    static = w.act_quant_scale is not None
    acts = {"num_bits": 8, "type": "int", "symmetric": sym, "dynamic": not static,
            "strategy": "tensor" if static else "token"}
    return LayerQuant(weights, w.dequantize(torch.float32), w.scale.float(), None, acts,
                      w.act_quant_scale if static else None,
                      w.act_quant_zero_point if static and not sym else None)


# -- GPTQ/AWQ folders (gptq-int4/-int8, awq-int4; qat-int4 writes GPTQ folders too) ------------------
def export_via_folder(save: Any, model: Any, tokenizer: Any, out: Path) -> dict[str, Any]:
    """Write the plugin's own GPTQ/AWQ folder with ``save`` beside ``out``, then convert it."""
    import shutil
    import tempfile

    native = Path(tempfile.mkdtemp(prefix=".llmq-native-", dir=out.parent))
    try:
        save(model, tokenizer, native)
        return export_gptq_folder(native, out, tokenizer)
    finally:
        shutil.rmtree(native, ignore_errors=True)


def export_gptq_folder(folder: Path, out: Path, tokenizer: Any = None) -> dict[str, Any]:
    """A GPTQ (v1/v2) or AWQ GEMM folder as a compressed-tensors ``pack-quantized`` folder (W4A16 /
    W8A16): each layer's codes, fp16 scales and zero points as the folder stores them, decoded with
    compressed-tensors' unpacker (AWQ: its own ``AutoAWQConverter``), written at float16 (the
    scales' dtype: vLLM and transformers hold scales in the model's dtype)."""
    import torch
    from compressed_tensors.compressors.pack_quantized.helpers import unpack_from_int32
    from compressed_tensors.quantization import QuantizationArgs
    from compressed_tensors.quantization.lifecycle.forward import dequantize
    from safetensors.torch import load_file
    from transformers import AutoConfig

    from llmq.models import read_json

    qc = read_json(folder / "config.json")["quantization_config"]
    method, bits, group = qc["quant_method"], int(qc["bits"]), int(qc.get("group_size") or -1)
    sym = bool(qc.get("sym", not qc.get("zero_point", False)))
    if bits not in (4, 8) or (method == "awq" and str(qc.get("format", qc.get("version", "gemm"))).lower() != "gemm"):
        raise ConfigError(f"compressed-tensors takes 4/8-bit GPTQ or AWQ GEMM folders; {folder} is {method} {bits}-bit.")
    state: dict[str, Any] = {}
    for f in sorted(folder.glob("*.safetensors")):
        state.update(load_file(str(f)))
    weights = {"num_bits": bits, "type": "int", "symmetric": sym, "dynamic": False,
               **({"strategy": "channel"} if group == -1 else {"strategy": "group", "group_size": group})}
    args = QuantizationArgs(**weights)
    layers = {}
    for name in [k[: -len(".qweight")] for k in state if k.endswith(".qweight")]:
        qweight, qzeros, scales = (state.pop(f"{name}.{t}") for t in ("qweight", "qzeros", "scales"))
        g_idx = state.pop(f"{name}.g_idx", None)
        if method == "awq":
            from compressed_tensors.entrypoints.convert.converters.autoawq import AutoAWQConverter

            t = AutoAWQConverter(bits=bits, group_size=group, zero_point=not sym).process(
                {f"{name}.qweight": qweight, f"{name}.qzeros": qzeros, f"{name}.scales": scales})
            scale = t[f"{name}.weight_scale"]
            q = unpack_from_int32(t[f"{name}.weight_packed"], bits, t[f"{name}.weight_shape"])
            zp = torch.zeros_like(scale, dtype=torch.int8) if sym else \
                unpack_from_int32(t[f"{name}.weight_zero_point"], bits, scale.shape, packed_dim=0)
        else:
            in_f, out_f = qweight.shape[0] * 32 // bits, qweight.shape[1]
            if g_idx is not None and not torch.equal(g_idx.long(), torch.arange(in_f) // (in_f if group == -1 else group)):
                raise ConfigError(f"{name} is act-order (g_idx), which compressed-tensors 0.20 cannot store.")
            if qc.get("checkpoint_format", "gptq") == "gptq":  # v1 stores zero - 1: GPTQModel's v1->v2 adds 1 per code
                qzeros = qzeros + sum(1 << (bits * i) for i in range(32 // bits))
            q = unpack_from_int32(qweight, bits, torch.Size([in_f, out_f]), packed_dim=0).T.contiguous()
            zp = unpack_from_int32(qzeros, bits, torch.Size([scales.shape[0], out_f])).T.contiguous()
            scale = scales.T.contiguous()
        if sym and bool((zp != 0).any()):
            raise ConfigError(f"{name}: a symmetric {method} folder with zero points off the middle code.")
        w = dequantize(q, scale.float(), zp, args, dtype=torch.float32)
        layers[name] = LayerQuant(weights, w, scale, None if sym else zp)
    model = dense_model(AutoConfig.from_pretrained(folder), torch.float16, state, set(layers))
    return write_compressed(model, layers, out, tokenizer)


class CompressedTensorsBackend(Backend):
    """Loads compressed-tensors folders (llmq's exports and llm-compressor's) and writes their card.
    It offers no scheme of its own: the plugins that quantize export into it."""

    name = FORMAT
    requires = (("compressed_tensors", "compressed-tensors"),)
    extra = "compressed-tensors"
    quant_methods = (FORMAT,)

    @classmethod
    def load_kwargs(cls, path: Path, quantization_config: dict, device: str, kernel: str | None) -> dict[str, Any]:
        """Asymmetric packed weights (AWQ's zero points) load dequantized: transformers 5.25 with
        compressed-tensors 0.20 builds their zero points unpacked on the meta device and then
        refuses the packed checkpoint tensors (size mismatch; llm-compressor issue #1618).
        Weight-only layers only, so the computation is the same."""
        out = super().load_kwargs(path, quantization_config, device, kernel)
        if needs_dequantize(quantization_config):
            import warnings

            from transformers import CompressedTensorsConfig

            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                out["quantization_config"] = CompressedTensorsConfig.from_dict({**quantization_config,
                                                                                "dequantize": True})
        return out

    @classmethod
    def load(cls, path: Path, **kwargs: Any) -> tuple[Any, Any]:
        import warnings

        with warnings.catch_warnings():  # transformers' note that load_kwargs' dequantize=True overrides the folder's
            warnings.filterwarnings("ignore", message="You passed `quantization_config`")
            return super().load(path, **kwargs)

    @classmethod
    def card_facts(cls, meta: dict, repo: str) -> CardFacts:
        qc = meta.get("quantization_config") or {}
        kind = layout_of(qc)
        version = (meta.get("versions") or {}).get("compressed-tensors") or qc.get("version")
        serve, tp_note = vllm_command(repo, meta)
        hardware = {
            "int-quantized": "vLLM runs W8A8 int8 with its CUTLASS int8 kernels (NVIDIA Turing and newer; the pick on "
                             "Ampere, which has no FP8).",
            "float-quantized": "vLLM runs FP8 W8A8 with FP8 tensor cores on Ada and Hopper (compute capability 8.9+); "
                               "on Ampere it falls back to FP8 weight-only Marlin.",
            "pack-quantized": "vLLM runs packed 4-bit weights with its Marlin kernels (Ampere and newer), the "
                              "batch-1 latency pick; other kernels where Marlin's shape rules do not hold.",
        }.get(qc.get("format"), "vLLM picks the kernel for this layout when it loads the folder.")
        return CardFacts(
            packages="transformers accelerate compressed-tensors", python=transformers_snippet(repo),
            tags=["compressed-tensors", "vllm"],
            hardware=hardware + " On CPU, transformers dequantizes the weights and quantizes activations in "
                                "float (correct, not fast).",
            note=(f"compressed-tensors {version} checkpoint ({kind}), written by llmq from its own "
                  f"{meta.get('scheme')} weights: the same codes and scales, in the layout vLLM reads."),
            serve=serve,
            serve_note=tp_note + VLLM_NOTE,
            rows=[("Checkpoint format", f"compressed-tensors, {qc.get('format')} ({kind})")])
