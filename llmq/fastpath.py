"""The one way llmq runs its torch outputs fast on CPU: a static KV cache and ``torch.compile``
(Inductor) of ``model.forward``, with torchao's recommended Inductor settings, freezing, and the
compiled kernels cached on disk.

Why this path: eagerly, every torchao int8 matmul dispatches through a tensor subclass (int8-dynamic
decodes at 0.54x fp32 on the SmolLM2 demo, issue #11); compiled, Inductor fuses activation
quantization, the int8 GEMM and the rescale. Decode (fewer than 16 rows per GEMM) needs more, all here:

* one-row int8 GEMMs: torchao quantizes activations to uint8 (u8s8) on CPUs with AVX512-VNNI and no
  AMX, where oneDNN's VNNI ``_int_mm`` is fast; elsewhere to int8 (s8s8), where oneDNN's one-row
  ``_int_mm`` costs what fp32 ``F.linear`` does (``scripts/bench_int8_kernels.py`` on each kind of
  VM), so few-row s8 GEMMs lower to Inductor's C++ GEMM template (:func:`_cpp_gemm_f32`). Every
  ``_int_mm`` operand is restrided against pytorch#195066 (:func:`patch_int_mm`);
* the float-activation int8 ``lm_head`` through the same template (:func:`few_rows_head`);
* one token's attention over grouped KV heads per KV head, without copying the static cache per
  query head (:func:`one_token_gqa_sdpa`).

Measured speed (``python scripts/bench_int8.py``, ``eval/bench_int8.json``, README "Static INT8"):
on a 2-core AMD EPYC VM (u8s8) int8-static decoded 3.8-4.5x and prefilled 2.1-2.6x fp32 eager at
batch 1 (2.97-3.12x / 2.6-2.8x at batch 8), and 2.96x the decode of fp32 compiled this same way
(``eval/bench_int8_reference.json``); on an earlier Intel Xeon VM (s8s8, the template) 2.25-2.84x
decode (``eval/bench_int8_gqa.json``). The first call per input shape compiles (one to three minutes
for SmolLM2 on 2 cores with an empty cache); Inductor's caches live under ``~/.cache/llmq/inductor-3``.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import Any

CACHE_ENV = "TORCHINDUCTOR_CACHE_DIR"


#: part of the default cache folder's name: bumped when llmq changes how graphs lower (Inductor's
#: cache key does not see llmq's lowering patch, so an older llmq's compiled graphs must not be reused)
CACHE_VERSION = 3


def cache_dir() -> Path:
    """Where compiled graphs go: ``$TORCHINDUCTOR_CACHE_DIR`` when the user chose one, else llmq's
    versioned folder. Torch's own default does not count as a choice: importing torchao already sets
    the variable to it (``/tmp/torchinductor_<user>``), where graphs lowered without llmq's patches
    could be served."""
    from torch._inductor.runtime.cache_dir_utils import default_cache_dir

    chosen = os.environ.get(CACHE_ENV)
    if chosen and os.path.abspath(chosen) != os.path.abspath(default_cache_dir()):
        return Path(chosen)
    return Path.home() / ".cache" / "llmq" / f"inductor-{CACHE_VERSION}"


def is_torchao_quantized(model: Any) -> bool:
    qc = getattr(getattr(model, "config", None), "quantization_config", None)
    method = qc.get("quant_method") if isinstance(qc, dict) else getattr(qc, "quant_method", None)
    return str(getattr(method, "value", method)) == "torchao"


def patch_int_mm() -> bool:
    """Work around pytorch/pytorch#195066 (open; fix in PR #194682, not in torch 2.14): on CPU,
    ``torch._int_mm`` silently returns uninitialised memory when an operand has a size-1 dimension
    with stride 0 (oneDNN rejects ``lda < K`` and the status is not checked). Inductor emits exactly
    that view for a single-token activation (``reinterpret_tensor(buf, (1, K), (0, 1))``), so every
    compiled torchao int8 model (int8-dynamic, int8-static) decoded garbage on CPU (without this
    patch ``tests/test_fastpath.py``'s compiled tiny model leaves the eager model's greedy tokens
    after the first). The fix is in Inductor's lowering of ``aten._int_mm``: an operand with a size-1
    dimension is copied into a fresh buffer with row-major strides (K int8 values per decode token;
    Inductor fuses the copy into the producer where it can), so both wrappers are safe: the Python
    one and the C++ one (``cpp_wrapper``), which calls ``at::_int_mm_out`` directly and which a
    Python-level wrapper of the extern kernel could not reach. Returns whether it was applied
    (idempotent)."""
    import torch
    import torch._inductor.kernel.mm  # noqa: F401  (registers the _int_mm lowering)
    from torch._inductor import ir, lowering
    from torch._inductor.virtualized import V

    aten = torch.ops.aten
    current = lowering.lowerings.get(aten._int_mm.default)
    if current is None:
        return False
    if getattr(current, "_llmq_patched", False):
        return True

    def _int_mm(mat1, mat2, *args, **kwargs):
        def safe(x):
            if any(V.graph.sizevars.statically_known_equals(s, 1) for s in x.get_size()):
                return ir.ExternKernel.copy_input(x)
            return x

        if mat1.get_dtype() == torch.int8 and _few_rows(mat1):  # u8s8 (VNNI CPUs) stays on oneDNN: fast there
            node = _cpp_gemm_f32(mat1, mat2)
            if node is not None:
                return lowering.to_dtype(node, torch.int32)
        return current(safe(mat1), safe(mat2), *args, **kwargs)

    _int_mm._llmq_patched = True
    for name in aten._int_mm.overloads():
        op = getattr(aten._int_mm, name)
        if lowering.lowerings.get(op) is current:
            lowering.lowerings[op] = _int_mm
    return True


#: GEMMs with fewer rows than this (tokens x batch) take the few-row route (Inductor's small-M
#: int8-weight blocking applies below 16); prefill and evaluation keep oneDNN's int8 GEMM
FEW_ROWS = 16


def _few_rows(mat: Any) -> bool:
    from torch._inductor.virtualized import V

    return mat.get_device().type == "cpu" and V.graph.sizevars.statically_known_lt(mat.get_size()[0], FEW_ROWS)


def _cpp_gemm_f32(mat1: Any, weight: Any, scale: Any = None, *, trans_w: bool = False) -> Any:
    """Lower ``mat1 @ weight`` (int8 or float activations, a frozen int8 weight) to Inductor's C++ GEMM
    template with bfloat16 activations and a float32 result, or return None where the template does
    not apply (weight not a frozen constant, no AVX2/AVX-512). Why: for a few rows oneDNN's s8s8
    ``_int_mm`` (torchao's form on CPUs without VNNI, or with AMX) costs about what fp32 ``F.linear``
    does per call, while the template's small-M int8-weight kernel streams the int8 weight with vector
    FMAs (SmolLM2's 210 decode GEMMs: 15.2 -> 10.7 ms per token in one stacked graph on the Xeon VM,
    issue #11's note). int8 activation values are exact in
    bfloat16 and the products accumulate in float32, so an int8 x int8 GEMM stays exact while its
    partial sums stay below 2**24 (any K <= 1032; beyond, only if nearly every product is extreme)."""
    import torch
    from torch._inductor import config, lowering
    from torch._inductor.codegen.cpp_gemm_template import CppGemmTemplate
    from torch._inductor.kernel.mm_common import mm_args
    from torch._inductor.select_algorithm import autotune_select_algorithm
    from torch._inductor.utils import use_cpp_gemm_template

    with config.patch(max_autotune=True, max_autotune_gemm_backends="CPP,ATEN"):
        a = lowering.to_dtype(mat1, torch.bfloat16)
        *_, layout, m1, m2 = mm_args(a, weight, out_dtype=torch.float32, mat2_transposed=trans_w)
        if not use_cpp_gemm_template(layout, m1, m2, mat2_transposed=trans_w):
            return None
        inputs, epilogue = [m1, m2], None
        if scale is not None:
            from torch._inductor.codegen.cpp_utils import create_epilogue_with_attr
            from torch._inductor.select_algorithm import realize_inputs

            inputs.append(scale)

            def times_scale(buf: Any) -> Any:
                return create_epilogue_with_attr(buf, "mul", other=realize_inputs(lowering.expand(scale, layout.size)))

            epilogue = times_scale

        choices: list = []
        CppGemmTemplate.add_choices(choices, layout, inputs, trans_w=trans_w, epilogue_creator=epilogue)
        if not choices:
            return None
        node, _ = autotune_select_algorithm("llmq_few_rows_int8_mm", choices, inputs, layout)
    return node


@functools.cache
def register_ops() -> None:
    """``llmq::int8_weight_mm(x, w, scale)``: ``x`` (float, rows x K) times an int8 weight (N x K) with
    per-row ``scale`` (N), as ``(x.bfloat16() @ w.T) * scale`` in float32. Compiled on CPU it lowers
    to :func:`_cpp_gemm_f32`; the int8 ``lm_head`` of the int8 schemes uses it for a few rows
    (:func:`few_rows_head`). Idempotent (cached)."""
    import torch
    from torch._inductor.lowering import register_lowering

    @torch.library.custom_op("llmq::int8_weight_mm", mutates_args=(),
                             schema="(Tensor x, Tensor w, Tensor scale) -> Tensor")
    def int8_weight_mm(x, w, scale):
        return (x.to(torch.bfloat16).float() @ w.float().t()) * scale

    @int8_weight_mm.register_fake
    def _(x, w, scale):
        return x.new_empty((x.shape[0], w.shape[0]), dtype=torch.float32)

    @register_lowering(torch.ops.llmq.int8_weight_mm.default, type_promotion_kind=None)
    def _lower(x, w, scale):
        from torch._inductor import lowering

        node = _cpp_gemm_f32(x, w, scale, trans_w=True) if _few_rows(x) else None
        if node is None:  # not a frozen weight, or no vector ISA: the eager formula
            return lowering.fallback_handler(torch.ops.llmq.int8_weight_mm.default, add_to_fallback_set=False)(
                x, w, scale)
        return node


def few_rows_head(head: Any) -> Any:
    """Wrap a torchao int8 weight-only ``lm_head`` (float activations, per-row scales, no bias) so that
    a few rows (decode, and ``generate``'s prefill, which keeps only the last position's logits) go
    through ``llmq::int8_weight_mm`` and any more rows (evaluation's full logits) through the head
    itself. Returns ``head`` unchanged when it is not such a head. Why: frozen by Inductor, torchao's
    weight-only head becomes an fp32 matmul over a folded fp32 copy of the weight (SmolLM2: 5.3 of
    ~31 ms per decode token, 113 MB read per token instead of 28 MB)."""
    import torch

    w = getattr(head, "weight", None)
    names = getattr(w, "tensor_data_names", None)
    if (getattr(head, "bias", None) is not None or names != ["qdata", "scale"]
            or getattr(w, "act_quant_kwargs", None) is not None or w.qdata.dtype != torch.int8
            or tuple(w.scale.shape) != (w.qdata.shape[0], 1)):
        return head
    register_ops()

    class FewRowsInt8Head(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.head = head
            self.register_buffer("qdata", w.qdata, persistent=False)
            self.register_buffer("scale", w.scale.reshape(-1).float(), persistent=False)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            rows = x.shape[:-1].numel()
            if rows >= FEW_ROWS or x.dtype != torch.float32:
                return self.head(x)
            y = torch.ops.llmq.int8_weight_mm(x.reshape(rows, x.shape[-1]), self.qdata, self.scale)
            return y.reshape(*x.shape[:-1], y.shape[-1])

    return FewRowsInt8Head()


#: the name :func:`compile_for_cpu` registers :func:`one_token_gqa_sdpa` under in transformers' AttentionInterface
ONE_TOKEN_GQA = "llmq_sdpa"


def one_token_gqa_sdpa(module: Any, query: Any, key: Any, value: Any, attention_mask: Any, dropout: float = 0.0,
                       scaling: float | None = None, is_causal: bool | None = None, **kwargs: Any) -> tuple[Any, None]:
    """transformers' ``sdpa`` attention, except that one query token over grouped KV heads attends per
    KV head (its ``n`` query heads become ``n`` query rows, as transformers itself does in eager mode)
    rather than through ``repeat_kv``, the path transformers takes under ``torch.compile``, which copies
    K and V ``n`` times every decode step (SmolLM2: 3 x 2 copies of the 640-slot static cache in each of
    30 layers per token). Anything else goes to transformers' ``sdpa`` unchanged."""
    import torch.nn.functional as F
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    n = getattr(module, "num_key_value_groups", 1)
    if (query.shape[2] == 1 and n > 1 and kwargs.get("position_bias") is None and kwargs.get("softcap") is None
            and (attention_mask is None or attention_mask.shape[1] == 1)):
        b, h, _, d = query.shape
        out = F.scaled_dot_product_attention(query.reshape(b, h // n, n, d), key, value, attn_mask=attention_mask,
                                             dropout_p=dropout, scale=scaling)
        return out.reshape(b, h, 1, d).transpose(1, 2).contiguous(), None
    return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                  is_causal=is_causal, **kwargs)


def _use_one_token_gqa(model: Any) -> None:
    """Switch a model on transformers' ``sdpa`` to :func:`one_token_gqa_sdpa` (in memory)."""
    from transformers import AttentionInterface

    if getattr(model.config, "_attn_implementation", None) != "sdpa":
        return
    AttentionInterface.register(ONE_TOKEN_GQA, one_token_gqa_sdpa)
    model.set_attn_implementation(ONE_TOKEN_GQA)


def compile_for_cpu(model: Any, *, dynamic: bool = False, freeze: bool = True) -> Any:
    """Compile ``model.forward`` in place for CPU inference and make ``generate`` use a static
    cache (one compiled graph per (batch, length) shape instead of one per step). Returns the
    model. Safe to call twice."""
    import torch

    if getattr(model, "_llmq_compiled", False):
        return model
    os.environ[CACHE_ENV] = str(cache_dir())
    import torch._inductor.config as ic

    ic.fx_graph_cache = True
    patch_int_mm()
    if is_torchao_quantized(model):
        from torchao.quantization.utils import recommended_inductor_config_setter

        recommended_inductor_config_setter()
    gc = model.generation_config
    gc.cache_implementation = "static"
    gc.disable_compile = True  # our compiled forward serves prefill and decode; no second wrapper
    if freeze and model.device.type == "cpu":
        # Freezing folds the weights into the graph as constants, which lets Inductor lower torchao's
        # int8 weight-only matmul (the int8-static lm_head with float activations) to a fast kernel:
        # 44-47 -> 3-6.5 ms per call for SmolLM2's 576x49152 head (scripts/bench_int8_kernels.py). Set
        # process-wide like torchao's recommended settings: torch.compile(options={"freezing": True})
        # compiled without it (same script). It only applies to graphs compiled without autograd.
        ic.freezing = True
    # Inductor's C++ wrapper (``cpp_wrapper``) stays off: on the demo's int8-static decode it gained
    # nothing measurable on 2 cores and made the first compile ~120 s longer (issue #11's note);
    # patch_int_mm keeps it correct for users who turn it on.
    if freeze and model.device.type == "cpu" and is_torchao_quantized(model):
        head = model.get_output_embeddings()
        fast = few_rows_head(head)  # the head itself (or None) when it is not a torchao int8 weight-only head
        if fast is not head:
            model.set_output_embeddings(fast)  # in memory only; the tied embedding keeps its tensor
    _use_one_token_gqa(model)
    model.forward = torch.compile(model.forward, dynamic=dynamic, fullgraph=False)
    model._llmq_compiled = True
    return model
