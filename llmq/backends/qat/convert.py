"""torchao plumbing of the QAT plugin: put fake quantizers on the model (``prepare``), and export
the trained model with exactly the grid training saw: torchao's ``convert`` step into quantized
weights with a ``TorchAoConfig``, or (int4 weight-only) packed GPTQ linears checked bit for bit."""

from __future__ import annotations

from typing import Any, Callable

from llmq.errors import LlmqError


# -- torchao plumbing ----------------------------------------------------------------------------
def _is_quantized_linear(skip: tuple[str, ...] = ()) -> Callable[[Any, str], bool]:
    """``lm_head`` stays full precision (tied to the embeddings in many models, as in llmq's other
    schemes). The filter must test the module type: quantize_ stops descending where it matches."""
    import torch

    import fnmatch

    skip = ("lm_head", *skip)

    def f(mod: Any, fqn: str) -> bool:
        return isinstance(mod, torch.nn.Linear) and not any(
            fqn == s or fqn.endswith("." + s) or fnmatch.fnmatch(fqn, s) for s in skip)

    return f


def _is_embedding_or_head(model: Any) -> Callable[[Any, str], bool]:
    """The input embedding and ``lm_head`` as they are when the filter runs (fake-quantized modules
    replace them in prepare; a tied pair shares one Parameter throughout)."""
    def f(mod: Any, fqn: str) -> bool:
        return mod is model.get_input_embeddings() or mod is model.get_output_embeddings()

    return f


def prepare_fake_quant(model: Any, cfg: Any) -> Any:
    """Swap decoder linears for torchao ``FakeQuantizedLinear`` (in place); ``cfg``: a ``QATConfig``.
    Schemes exported as GPTQ get the fake quantizer of ``gptq_fake_quant_config`` (fp16 scales, the
    precision GPTQ stores); the others the one torchao derives from their base config, and their
    embedding and ``lm_head`` an int8 per-row weight fake quantizer (``quantize_embeddings``)."""
    from torchao.quantization import quantize_
    from torchao.quantization.qat import QATConfig

    from llmq.backends.qat.config import base_config, embedding_fake_quant_config, exports_gptq, gptq_fake_quant_config, quantizes_embeddings

    qc = (QATConfig(weight_config=gptq_fake_quant_config(cfg), step="prepare") if exports_gptq(cfg)
          else QATConfig(base_config(cfg), step="prepare"))
    quantize_(model, qc, filter_fn=_is_quantized_linear(cfg.skip_modules))
    if quantizes_embeddings(cfg):
        quantize_(model, QATConfig(weight_config=embedding_fake_quant_config(), step="prepare"),
                  filter_fn=_is_embedding_or_head(model))
    return model


def convert_fake_quant(model: Any, cfg: Any) -> Any:
    """Fake-quantized linears -> real torchao quantized weights, with the same base config; the
    fake-quantized embedding/``lm_head`` -> torchao int8 per row (the grid training used)."""
    from torchao.quantization import quantize_
    from torchao.quantization.qat import QATConfig

    from llmq.backends.qat.config import base_config, quantizes_embeddings
    from llmq.backends.torchao import prepare_runtime

    prepare_runtime()

    quantize_(model, QATConfig(base_config(cfg), step="convert"), filter_fn=_is_quantized_linear(cfg.skip_modules))
    if quantizes_embeddings(cfg):
        quantize_(model, QATConfig(step="convert"), filter_fn=_is_embedding_or_head(model))  # back to plain modules
        from llmq.backends.torchao import quantize_embeddings

        quantize_embeddings(model, "float")
    return model


def ptq(model: Any, cfg: Any) -> Any:
    """The same torchao base config applied with no training: the round-to-nearest PTQ baseline."""
    from torchao.quantization import quantize_

    from llmq.backends.qat.config import base_config, quantizes_embeddings
    from llmq.backends.torchao import prepare_runtime

    prepare_runtime()

    quantize_(model, base_config(cfg), filter_fn=_is_quantized_linear(cfg.skip_modules))
    if quantizes_embeddings(cfg):
        from llmq.backends.torchao import quantize_embeddings

        quantize_embeddings(model, "float")
    return model


def attach_torchao_config(model: Any, cfg: Any) -> None:
    """Make ``save_pretrained`` write torchao safetensors (flattened tensor subclasses + metadata)
    and a ``quantization_config`` that ``from_pretrained`` reloads; with int8 embeddings through the
    torchao plugin's tied-aware saver (one copy of a tied table), as int8-dynamic saves them."""
    from transformers import TorchAoConfig
    from transformers.quantizers import AutoHfQuantizer

    from llmq.backends.qat.config import base_config, quantizes_embeddings

    if quantizes_embeddings(cfg):
        from llmq.backends.torchao import attach_torchao_saver

        qc = TorchAoConfig(base_config(cfg), modules_to_not_convert=list(cfg.skip_modules) or None)
        qc.include_input_output_embeddings = True
        attach_torchao_saver(model, qc)
        return
    qc = TorchAoConfig(base_config(cfg), modules_to_not_convert=["lm_head", *cfg.skip_modules])
    model.config.quantization_config = qc
    model.hf_quantizer = AutoHfQuantizer.from_config(qc)


def to_gptq(model: Any, cfg: Any, dtype: Any = None) -> Any:
    """Fake-quantized linears -> GPTQ 4-bit linears packed by GPTQModel (in place; returns the model).

    The integer grid is the one training saw: each layer's torchao fake quantizer gives its
    fake-quantized weight ``q * scale`` and its fp16 scales (symmetric, zero point 0), and
    GPTQModel's own packer (``pack_original``) re-derives ``q + 8`` from them (exact: ``q * scale``
    and ``(q + 8) * scale`` are exact in fp32 for 4-bit ``q``, zero point 8 = GPTQ's symmetric
    midpoint). Every packed layer is dequantized again and must equal the fake-quantized weight
    bit for bit, else this raises. GPTQModel's v2 layout is then turned into the v1 checkpoint
    layout (zero points stored minus one) with GPTQModel's converter, so ``save_pretrained``
    writes the folder transformers + GPTQModel load like llmq's ``gptq-int4``. Everything else
    (embeddings, norms, a tied or untied ``lm_head``) is cast to ``dtype`` (default bf16, as
    in GPTQModel's CPU folders; its AVX-512 CPU int4 kernel needs bf16 activations)."""
    import torch
    from torchao.quantization.qat import FakeQuantizedLinear

    from llmq.backends.gptqmodel_cpu import ensure_cpu_workers
    from llmq.safety import check_finite

    ensure_cpu_workers()
    from gptqmodel import QuantizeConfig
    from gptqmodel.nn_modules.qlinear.torch import TorchLinear
    from gptqmodel.utils.model import convert_gptq_v2_to_v1_format_module

    from llmq.version import __version__

    dtype = dtype or torch.bfloat16
    qcfg = QuantizeConfig(bits=cfg.bits, group_size=cfg.group_size, sym=True, desc_act=False,
                          offload_to_disk=False)
    mid = 2 ** (cfg.bits - 1)  # GPTQ's symmetric zero point: int4 q in [-8, 7] is stored as q + 8
    packed = {}
    for name, mod in model.named_modules():
        if not isinstance(mod, FakeQuantizedLinear):
            continue
        fq = mod.weight_fake_quantizer
        with torch.no_grad():
            wq = fq(mod.weight.detach().float()).cpu()
        scale, zero = fq.scale.cpu(), fq.zero_point.cpu()
        check_finite([(f"{name}.weight", wq), (f"{name}.scales", scale)], "The QAT model")  # before packing
        if zero.any():
            raise LlmqError(f"{name}: torchao's fake quantizer has non-zero zero points; the GPTQ export expects symmetric.")
        gs = cfg.group_size if cfg.group_size != -1 else mod.in_features
        ql = TorchLinear(bits=cfg.bits, group_size=cfg.group_size, sym=True, desc_act=False,
                         in_features=mod.in_features, out_features=mod.out_features, bias=mod.bias is not None,
                         pack_dtype=torch.int32)
        src = torch.nn.Linear(mod.in_features, mod.out_features, bias=mod.bias is not None)
        src.weight.data = wq
        if mod.bias is not None:
            src.bias.data = mod.bias.detach().float().cpu()
        g_idx = torch.arange(mod.in_features, dtype=torch.int32) // gs
        ql.pack_original(src, scale.float(), zero.float() + mid, g_idx)
        s16, ql.scales = ql.scales, ql.scales.float()  # dequantize in fp32 to compare exactly
        deq = ql.dequantize_weight().T
        ql.scales = s16
        if not torch.equal(deq, wq):
            raise LlmqError(f"{name}: the packed GPTQ weights differ from the fake-quantized ones by up to "
                            f"{(deq - wq).abs().max().item():.3g}; refusing to save a model training did not see.")
        convert_gptq_v2_to_v1_format_module(ql, qcfg)
        packed[name] = ql
    if not packed:
        raise LlmqError("No fake-quantized linears to export as GPTQ (was the model prepared for QAT?).")
    model.to(device="cpu", dtype=dtype)  # the packed modules are not attached yet: they stay int32/fp16
    for name, ql in packed.items():
        parent, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent), child, ql)
    qc = qcfg.to_dict()
    meta = qc.setdefault("meta", {})
    meta["quantizer"] = [*meta.get("quantizer", []), f"llmq:{__version__}"]
    meta["qat"] = ("torchao fake-quantized int4 weights, symmetric, fp16 scales, packed by GPTQModel "
                   "(TorchLinear.pack_original); no GPTQ error correction was run")
    model.config.quantization_config = qc
    model.config.dtype = dtype
    return model


def count_fake_quantized(model: Any) -> int:
    """Fake-quantized modules left in ``model`` (linears, and embeddings where the scheme quantizes them)."""
    from torchao.quantization.qat import FakeQuantizedEmbedding, FakeQuantizedLinear

    return sum(isinstance(m, (FakeQuantizedLinear, FakeQuantizedEmbedding)) for m in model.modules())
