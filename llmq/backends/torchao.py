"""torchao int8 dynamic quantization (int8 weights per channel, int8 activations per token at run
time), through transformers' ``TorchAoConfig`` so the checkpoint is written as safetensors with
torchao's metadata and reloads with plain ``from_pretrained``."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Sequence

from llmq.backends.base import VLLM_NOTE, Backend, CardFacts, Scheme, torch_dtype, transformers_snippet
from llmq.backends.compressed import FORMAT as CT_FORMAT, export_torchao
from llmq.config import DTYPES, QuantConfigBase, check_choice
from llmq.errors import ConfigError
from llmq.models import excluded_modules, linear_shapes


@dataclass(kw_only=True)
class Int8DynamicConfig(QuantConfigBase):
    """torchao int8 weights (per output channel) with int8 activations quantized per token at run
    time. Per-channel matters: per-tensor weight scales (the deprecated
    ``torch.ao.quantization.quantize_dynamic``) lose far more on small models."""

    formats: ClassVar[tuple[str, ...]] = (CT_FORMAT,)
    format_defaults: ClassVar[dict[str, dict[str, Any]]] = {CT_FORMAT: {"quantize_embeddings": False}}
    weight_granularity: str = "per_channel"
    dtype: str = "float32"
    quantize_embeddings: bool = True  # int8 per-row embeddings and lm_head (False: keep them at dtype)
    lm_head_activations: str = "float"  # "float": int8-weight-only lm_head; "int8": per-token activations too

    def validate(self) -> None:
        super().validate()
        check_choice("weight_granularity", self.weight_granularity, ("per_channel", "per_tensor"))
        check_choice("dtype", self.dtype, DTYPES)
        if not isinstance(self.quantize_embeddings, bool):
            raise ConfigError(f"quantize_embeddings must be True or False, got {self.quantize_embeddings!r}.")
        check_choice("lm_head_activations", self.lm_head_activations, HEAD_ACTIVATIONS)
        check_ct_embeddings(self)


def check_ct_embeddings(cfg: Any) -> None:
    """compressed-tensors folders keep the embeddings and lm_head at ``dtype``: vLLM reads no
    quantized embedding from them."""
    if cfg.format == CT_FORMAT and cfg.quantize_embeddings:
        raise ConfigError("format='compressed-tensors' keeps the embeddings and lm_head at dtype (vLLM reads no "
                          "quantized embeddings); drop quantize_embeddings=True.")


class TorchAoBackend(Backend):
    name = "torchao"
    requires = (("torchao", "torchao"),)
    extra = "torchao"
    quant_methods = ("torchao",)
    exports = (CT_FORMAT,)
    schemes = (
        Scheme("int8-dynamic", "torchao", Int8DynamicConfig, {}, 8,
               "torchao int8 weights per channel, int8 activations per token at run time", "8",
               "CPU: int8 weights and activations (torchao), the CPU pick",
               tree_rank={"cpu": 0, "gpu_fits": 8, "gpu_8bit": 7, "gpu_4bit": 7}, serve_as="w8a8-int8"),
    )

    def torchao_config(self, model_dir: Path) -> tuple[Any, Any]:
        """``(torchao config of the Linears, transformers TorchAoConfig recorded in config.json)``."""
        from torchao.quantization import Int8DynamicActivationInt8WeightConfig, PerRow, PerTensor
        from transformers import AutoConfig, TorchAoConfig

        gran = PerRow() if self.config.weight_granularity == "per_channel" else PerTensor()
        cfg = AutoConfig.from_pretrained(model_dir)
        skip = excluded_modules(cfg, list(linear_shapes(cfg)), self.config.skip_modules)
        lin = Int8DynamicActivationInt8WeightConfig(granularity=gran, set_inductor_config=False)
        return lin, TorchAoConfig(lin, modules_to_not_convert=skip or None)

    def quantize(self, model_dir: Path, calibration: Any, device: str) -> Any:
        """Block by block from the checkpoint's shards (``llmq.streaming``): each decoder layer's
        Linears quantized with torchao's ``quantize_`` and written, then freed, so memory is bounded
        by a layer; a checkpoint that cannot be streamed loads whole through transformers."""
        import torch

        from llmq.streaming import BlockModel, NotStreamable

        prepare_runtime()
        lin, qc = self.torchao_config(model_dir)
        try:
            bm = BlockModel(model_dir, torch_dtype(self.config.dtype))
        except NotStreamable:
            return self._quantize_whole(model_dir, device, qc)

        def convert(block: str, module: Any) -> None:
            from torchao.quantization import quantize_
            from transformers.quantizers.quantizers_utils import should_convert_module

            quantize_(module, lin, filter_fn=lambda m, fqn: isinstance(m, torch.nn.Linear)
                      and should_convert_module(f"{block}.{fqn}", qc.modules_to_not_convert))

        qe = self.config.quantize_embeddings
        if qe:
            qc.include_input_output_embeddings = True
        self._model = stream_torchao(bm, convert, qc, self.config.dtype, qe and self.config.lm_head_activations,
                                     device=device, work_dir=self.options.get("work_dir"))
        return self._model

    def _quantize_whole(self, model_dir: Path, device: str, qc: Any) -> Any:
        from transformers import AutoModelForCausalLM

        model = AutoModelForCausalLM.from_pretrained(
            model_dir, dtype=torch_dtype(self.config.dtype), device_map=device, quantization_config=qc
        )
        if self.config.quantize_embeddings:  # int8 per row; fp32 embeddings were 40% of the folder
            quantize_embeddings(model, self.config.lm_head_activations)
            qc.include_input_output_embeddings = True
            attach_torchao_saver(model, qc)
        self._model = model
        return model

    @classmethod
    def load_kwargs(cls, path: Path, quantization_config: dict, device: str, kernel: str | None) -> dict[str, Any]:
        out = super().load_kwargs(path, quantization_config, device, kernel)
        prepare_runtime()  # int8-static folders written by torchao elsewhere too
        return out

    def export(self, model: Any, tokenizer: Any, out: Path, fmt: str) -> dict[str, Any]:
        return export_torchao(in_memory(model, self.config.dtype), tokenizer, out, torch_dtype(self.config.dtype))

    @classmethod
    def load(cls, path: Path, *, device: str, dtype: Any = "auto", kernel: str | None = None,
             trust_remote_code: bool = False) -> tuple[Any, Any]:
        model, tok = super().load(path, device=device, dtype=dtype, kernel=kernel, trust_remote_code=trust_remote_code)
        restore_buffers(model)  # e.g. Gemma's embed_scale, left as uninitialized memory by transformers
        return model, tok

    def extra_metadata(self) -> dict[str, Any]:
        return buffers_record(getattr(self, "_model", None))

    @classmethod
    def estimate(cls, profile: Any, scheme: Scheme, config: Any, device: str) -> Any:
        """``_weight_qdata`` int8 + per-row fp32 ``_weight_scale`` + int8 ``_weight_zero_point``;
        embeddings/lm_head int8 per row too unless ``quantize_embeddings=False``; everything else at
        the config's ``dtype`` (float32 by default)."""
        from llmq.sizing import int8_rowwise

        if config.quantize_embeddings:
            return torchao_int8_estimate(profile, config, scheme.name)
        return int8_rowwise(profile, scheme.name, config.dtype, zero_point=True, skip=tuple(config.skip_modules))

    @classmethod
    def card_facts(cls, meta: dict, repo: str) -> CardFacts:
        version = (meta.get("versions") or {}).get("torchao")
        restored = bool(meta.get("restored_on_load"))  # plain from_pretrained would leave a buffer uninitialized
        return CardFacts(
            packages="transformers accelerate torchao" + (" llmq" if restored else ""),
            python=llmq_snippet(repo) if restored else transformers_snippet(repo), tags=["torchao"],
            hardware="torchao int8 dynamic quantization runs on CPU and GPU; its speed depends on torch.compile and "
                     "the int8 matmul kernels of your hardware.",
            note=(f"Made with torchao {version}: torchao checkpoints are tied to torchao's "
                  "serialization format, so load them with the same (or a compatible) torchao version."
                  + buffers_note(meta)),
            serve=f"vllm serve {repo}",
            serve_note=("vLLM reads torchao checkpoints saved by transformers (see torchao's serving guide, "
                        "docs.pytorch.org/ao/stable/serving.html) when its torchao version matches; "
                        "llmq has not tested this path. " + VLLM_NOTE))


def llmq_snippet(repo: str) -> str:
    return ("import llmq\n\n"
            f'model, tokenizer = llmq.load("{repo}", device="cpu")\n'
            'inputs = tokenizer("The capital of France is", return_tensors="pt")\n'
            "out = model.generate(**inputs, max_new_tokens=20)\n"
            "print(tokenizer.decode(out[0], skip_special_tokens=True))")


# -- shared by the torchao int8 schemes (int8-dynamic here, int8-static in int8_static.py) ------
HEAD_ACTIVATIONS = ("float", "int8")


def quantize_embeddings(model: Any, head_activations: str = "float") -> None:
    """int8 per row for the input embedding and ``lm_head`` (one tensor when tied; issue #11: fp32
    embeddings were 40% of the SmolLM2 folder). ``head_activations``: ``"float"`` multiplies
    ``lm_head`` with float activations (torchao int8 weight-only, which Inductor lowers to its
    int8-weight matmul) because SmolLM2's final hidden states carry outlier channels that cost
    +0.7% perplexity when quantized per token; ``"int8"`` quantizes them per token at run time."""
    from torchao.quantization import (Int8DynamicActivationInt8WeightConfig, Int8WeightOnlyConfig, PerRow,
                                      quantize_)

    check_choice("head_activations", head_activations, HEAD_ACTIVATIONS)
    emb, head = model.get_input_embeddings(), model.get_output_embeddings()
    tied = head is not None and head.weight is emb.weight
    targets = {id(emb)} | ({id(head)} if head is not None else set())
    cfg = (Int8WeightOnlyConfig(granularity=PerRow(), set_inductor_config=False) if head_activations == "float"
           else Int8DynamicActivationInt8WeightConfig(granularity=PerRow(), set_inductor_config=False))
    quantize_(model, cfg, filter_fn=lambda m, fqn: id(m) in targets)
    if tied:
        head.weight = emb.weight


def attach_torchao_saver(model: Any, qc: Any) -> None:
    """Make ``save_pretrained`` write ``model`` (torchao tensors, ``qc`` a ``TorchAoConfig``) as
    torchao safetensors, each tied tensor once: transformers 5.24 writes both halves of a tied
    tensor subclass and then cannot compare them on reload (no ``aten.equal`` for ``Int8Tensor``)."""
    from transformers.quantizers.quantizer_torchao import TorchAoHfQuantizer

    class _TiedAwareTorchAoQuantizer(TorchAoHfQuantizer):
        def get_state_dict_and_metadata(self, model):
            from torchao.prototype.safetensors.safetensors_support import flatten_tensor_state_dict

            sd = model.state_dict()
            for k in getattr(model, "all_tied_weights_keys", None) or {}:
                sd.pop(k, None)
            return flatten_tensor_state_dict(sd)

    model.config.quantization_config = qc
    model.hf_quantizer = _TiedAwareTorchAoQuantizer(qc)


def in_memory(model: Any, dtype: str) -> Any:
    """The quantized model with its torchao tensors in memory, for an export's writer: ``model``
    itself, or an output written block by block (``llmq.streaming.WrittenOutput``) loaded back from
    its files, static scales and restored buffers included."""
    from llmq.streaming import WrittenOutput

    if not isinstance(model, WrittenOutput):
        return model
    from transformers import AutoModelForCausalLM

    prepare_runtime()
    loaded = AutoModelForCausalLM.from_pretrained(model.folder, dtype=torch_dtype(dtype), device_map="cpu").eval()
    restore_buffers(loaded)
    return loaded


def restore_buffers(model: Any) -> list[str]:
    """Re-initialize the non-persistent buffers of the modules transformers' torchao loader rebuilt;
    returns their names. Why: ``TorchAoDeserialize`` marks each module whose weight it rebuilds as
    initialized (transformers 5.24-5.25), so ``_init_weights`` skips it, and a non-persistent buffer
    of that module (never saved, allocated with ``torch.empty`` on load) keeps whatever memory it
    got. Gemma-2/3's ``ScaledWordEmbedding.embed_scale`` (sqrt(hidden)) is one: with int8 embeddings
    it read ~1e-44 or ~1e25, so every token embedding was ~0 or huge and the outputs garbage
    (perplexity = the vocabulary size, or 1e207). The model's own ``_init_weights`` is run again on
    those modules only; their loaded weights are flagged initialized, so it sets just the buffers."""
    import torch
    from torchao.utils import TorchAOBaseTensor
    from transformers import PreTrainedModel

    restored = []
    owners = {"": model}
    for name, mod in model.named_modules():
        if isinstance(mod, PreTrainedModel):
            owners[name] = mod
        if not mod._non_persistent_buffers_set:
            continue
        params = list(mod.parameters(recurse=False))
        if not any(isinstance(p, TorchAOBaseTensor) for p in params):
            continue
        owner = owners[max((k for k in owners if not k or name.startswith(k + ".")), key=len)]
        for p in params:
            p._is_hf_initialized = True
        for b in mod._non_persistent_buffers_set:
            buf = getattr(mod, b, None)
            if buf is not None:
                buf._is_hf_initialized = False
        mod._is_hf_initialized = False
        with torch.no_grad():
            owner._initialize_weights(mod)
        restored += [f"{name}.{b}" if name else b for b in sorted(mod._non_persistent_buffers_set)]
    return restored


def buffers_record(model: Any) -> dict[str, Any]:
    """``llmq.json``'s note of the non-persistent buffers living in int8 modules of ``model`` (the
    ones plain transformers leaves uninitialized on load, see :func:`restore_buffers`); {} if none.
    ``model``: the quantized model, or the ``WrittenOutput`` of :func:`stream_torchao` (which noted
    them block by block)."""
    if model is None:
        return {}
    names = model.extra.get("restored_on_load", []) if hasattr(model, "extra") else buffer_names(model)
    return {"restored_on_load": names} if names else {}


def buffer_names(root: Any, prefix: str = "") -> list[str]:
    """Non-persistent buffers of the modules under ``root`` that hold torchao tensors."""
    from torchao.utils import TorchAOBaseTensor

    pre = prefix + "." if prefix else ""
    return [f"{pre}{n}.{b}" if n else f"{pre}{b}" for n, m in root.named_modules() if m._non_persistent_buffers_set
            and any(isinstance(p, TorchAOBaseTensor) for p in m.parameters(recurse=False))
            for b in sorted(m._non_persistent_buffers_set)]


def buffers_note(meta: dict) -> str:
    """The card's warning for a folder with :func:`buffers_record` entries."""
    names = meta.get("restored_on_load") or []
    if not names:
        return ""
    return (f" This model keeps {', '.join(f'`{n}`' for n in names)} in an int8 module: plain transformers "
            "(5.24-5.25) leaves such a non-persistent buffer uninitialized on load (garbage outputs); "
            "`llmq.load` restores it (`llmq.backends.torchao.restore_buffers(model)` after `from_pretrained`).")
def stream_torchao(bm: Any, convert: Any, qc: Any, dtype: str, embeddings: str | bool, *, device: str = "cpu",
                   work_dir: Any = None) -> Any:
    """Write a torchao folder block by block (``llmq.streaming``): ``convert(block, module)``
    quantizes a decoder layer in place; the embeddings block goes through
    :func:`quantize_embeddings` when ``embeddings`` names lm_head's activations (False: kept
    float). Each block's state is flattened with torchao's own ``flatten_tensor_state_dict`` (as
    transformers' torchao saver does); every shard carries the full ``tensor_names`` list and the
    entries of its own tensors, so transformers' loader (which merges the shards' metadata) reads it."""
    import json

    from torchao.prototype.safetensors.safetensors_support import flatten_tensor_state_dict

    from llmq.streaming import stream_folder

    restored: list[str] = []  # buffers plain transformers will leave uninitialized (restore_buffers)

    def conv(block: str, names: list[str]) -> None:
        if block == "embeddings":
            if embeddings:
                quantize_embeddings(bm.model, embeddings)
                for mod in {bm.model.get_input_embeddings(), bm.model.get_output_embeddings()} - {None}:
                    name = next(n for n, m in bm.model.named_modules() if m is mod)
                    restored.extend(buffer_names(mod, name))
        elif block.startswith(bm.layers_name + "."):
            convert(block, bm.module(block))
            restored.extend(buffer_names(bm.module(block), block))

    def serialize(state: dict) -> tuple[dict, dict]:
        tensors, meta = flatten_tensor_state_dict(state)
        meta.pop("tensor_names", None)
        return tensors, meta

    out = stream_folder(bm, dtype=dtype, convert=conv, serialize=serialize, quantization_config=qc,
                        common_metadata={"tensor_names": json.dumps(bm.names), "format": "pt"},
                        work_dir=work_dir, device=device)
    if restored:
        out.extra["restored_on_load"] = sorted(set(restored))
    return out


_PATCHED = False


def prepare_runtime() -> None:
    """What torchao models need in this process before they load or run, idempotent: transformers'
    loader keeps static activation scales (:func:`enable_loading`), and on CPUs with neither VNNI nor
    AMX int8 GEMMs take the exact fp32 path (``llmq.backends.torchao_patches``)."""
    from llmq.backends.torchao_patches import patch_cpu_int_mm

    enable_loading()
    patch_cpu_int_mm()


def enable_loading() -> None:
    """Let transformers' torchao loader read static activation scales (``_weight_act_quant_scale``
    and ``_weight_act_quant_zero_point``), which transformers 5.24 omits from its list of
    serialized names (it drops them silently, leaving uncalibrated scales); idempotent, and a
    no-op where transformers already lists them."""
    global _PATCHED
    if _PATCHED:
        return
    from transformers.quantizers.quantizer_torchao import TorchAoHfQuantizer

    orig = TorchAoHfQuantizer.serialized_names.fget

    def serialized_names(self):
        out = {}
        for k, v in orig(self).items():
            extra = [f"_{k}_act_quant_scale", f"_{k}_act_quant_zero_point"]
            out[k] = list(v) + [e for e in extra if e not in v]
        return out

    TorchAoHfQuantizer.serialized_names = property(serialized_names)
    _PATCHED = True


def int8_embedding_bytes(profile: Any, quantize: bool) -> tuple[int, int, int]:
    """``(int8 parameters, scale/zero-point bytes, tables)`` for the input embedding and a separate
    ``lm_head`` as :func:`quantize_embeddings` stores them: int8 per row with an fp32 scale and an
    int8 zero point per row (``qdata``, ``scale``, ``zero_point``); ``(0, 0, tables)`` when kept float."""
    tables = [profile.embedding_params] + ([profile.lm_head_params] if profile.lm_head_params else [])
    if not quantize:
        return 0, 0, len(tables)
    return sum(tables), 5 * profile.vocab * len(tables), len(tables)


def torchao_int8_estimate(profile: Any, cfg: Any, scheme: str) -> Any:
    """Bytes on disk for torchao's int8 layouts with int8 embeddings (int8-dynamic, int8-static).
    Per quantized Linear: int8 ``qdata``, fp32 ``scale`` and int8 ``zero_point`` per row (per
    tensor: one each; torchao writes the zero point even when symmetric); static adds an fp32
    ``act_quant_scale`` (+ int8 ``act_quant_zero_point`` when asymmetric, + fp32 ``act_pre_scale``
    per input channel when smoothing). Embeddings and a separate lm_head: int8 per row with the same
    three tensors (or kept at ``cfg.dtype``). The rest stays at ``cfg.dtype``."""
    from llmq.sizing import BYTES, SizeEstimate, header_bytes, selected_linears

    static = hasattr(cfg, "calibration_method")
    lins, _ = selected_linears(profile, False, tuple(cfg.skip_modules))
    lins = [l for l in lins if l.name != "lm_head"]
    q = sum(l.numel for l in lins)
    per_row = cfg.weight_granularity == "per_channel"
    scales, n_q_tensors = 0, 0
    smoothed: set[str] = set()
    if static:
        pass

        smoothed = set(alphas_for([l.name for l in lins], cfg.smooth_alpha))
    for l in lins:
        scales += (l.out_features if per_row else 1) * 5
        n_q_tensors += 3
        if static:
            scales += 4 + (0 if cfg.sym else 1) + (4 * l.in_features if l.name in smoothed else 0)
            n_q_tensors += 1 + (0 if cfg.sym else 1) + (1 if l.name in smoothed else 0)
    emb_q, emb_scales, n_tables = int8_embedding_bytes(profile, cfg.quantize_embeddings)
    n_emb_tensors = (3 if cfg.quantize_embeddings else 1) * n_tables
    kept_params = profile.parameters - q - emb_q
    kept = kept_params * BYTES[cfg.dtype]
    n_kept = 2 * profile.layers + 1 + (len(profile.linears) - len(lins) - (1 if profile.lm_head_params else 0))
    hdr = header_bytes(n_q_tensors + n_emb_tensors + n_kept, "torchao")
    total = q + scales + emb_q + emb_scales + kept + hdr
    return SizeEstimate(scheme, "int8", total, q + emb_q, kept_params, cfg.dtype,
                        8 * (q + scales + emb_q + emb_scales) / (q + emb_q) if q + emb_q else None,
                        {"int8 weights": q + emb_q, "scales/zeros": scales + emb_scales,
                         f"kept ({cfg.dtype})": kept, "header": hdr})


def alphas_for(names: Sequence[str], spec: Any) -> dict[str, float]:
    """Each Linear's SmoothQuant alpha from ``smooth_alpha`` (a number, or {pattern: alpha} where
    the longest matching pattern wins and "off" means none); Linears without one are left out."""
    from llmq.models import excluded_modules

    if spec is None or spec == "off":
        return {}
    if not isinstance(spec, dict):
        return {n: float(spec) for n in names}
    out: dict[str, float] = {}
    for n in names:
        hits = [p for p in spec if excluded_modules(None, [n], (p,)) == [n]]
        if hits:
            a = spec[max(hits, key=len)]
            if a is not None and a != "off":
                out[n] = float(a)
    return out
