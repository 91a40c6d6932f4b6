"""The torchao plugin (int8-dynamic): int8 per-row embeddings and lm_head by default (issue #11),
stored once when tied, reloading with identical logits; the opt-out keeps them float."""

from __future__ import annotations

import pytest


def _whole_model(src, **kw):
    """The same quantization on the whole model in memory: transformers' quantize-on-load."""
    from llmq.backends.torchao import TorchAoBackend
    from llmq.schemes import get_scheme

    sch = get_scheme("int8-dynamic")
    b = TorchAoBackend(sch, sch.config(**kw))
    return b._quantize_whole(src, "cpu", b.torchao_config(src)[1]).eval()


def test_int8_dynamic_embeddings_are_int8_tied_and_reload(tiny_model_dir, tmp_path):
    """Written block by block, the folder reloads as the whole model quantized in memory does:
    identical logits, int8 embeddings tied to lm_head."""
    import torch
    from torchao.quantization import Int8Tensor

    import llmq
    from llmq.models import folder_size

    x = torch.tensor([list(range(5, 45))])
    q = llmq.quantize(str(tiny_model_dir), "int8-dynamic", device="cpu")
    ref = _whole_model(tiny_model_dir)
    assert isinstance(ref.model.embed_tokens.weight, Int8Tensor)
    with torch.no_grad():
        before = ref(x).logits
    out = q.save(tmp_path / "d")
    model, _ = llmq.load(out, device="cpu")
    with torch.no_grad():
        assert torch.equal(model(x).logits, before)
    assert isinstance(model.lm_head.weight, Int8Tensor)
    assert model.lm_head.weight is model.model.embed_tokens.weight
    keep = llmq.quantize(str(tiny_model_dir), "int8-dynamic", device="cpu", quantize_embeddings=False)
    kept = keep.hf_model
    assert not isinstance(kept.model.embed_tokens.weight, Int8Tensor)
    emb = kept.model.embed_tokens.weight.numel()
    saved = folder_size(keep.save(tmp_path / "k")) - folder_size(out)
    assert saved > 0.7 * 3 * emb  # fp32 -> int8 per row, stored once


def test_gemma_int8_embeddings_keep_their_scale_on_reload(tmp_path):
    """Gemma-2/3 multiply token embeddings by sqrt(hidden) (``embed_scale``, a non-persistent buffer).
    transformers' torchao loader marks the int8 embedding module initialized, so that buffer was left
    as uninitialized memory: every int8-dynamic/int8-static Gemma loaded by llmq computed garbage
    (perplexity = the vocabulary size, or 1e207). Deterministic mode fills uninitialized memory with
    NaN, so the bug shows the same way on every run: plain ``from_pretrained`` gets NaN,
    ``llmq.load`` (``restore_buffers``) the right value, and the saved output verifies at the level
    of a Llama of the same size (scripts/bench_verify.py: KL 0.0002 Gemma, 0.0014 Llama)."""
    import json
    import math

    import torch
    from transformers import AutoModelForCausalLM

    import llmq
    from llmq.backends.torchao import TorchAoBackend, enable_loading, restore_buffers
    from llmq.testing import tiny_gemma

    for version in (2, 3):
        src = tiny_gemma(tmp_path / f"gemma{version}", version=version)
        out = llmq.quantize(str(src), "int8-dynamic", device="cpu").save(tmp_path / f"g{version}-i8")
        meta = json.loads((out / "llmq.json").read_text())
        assert meta["verification"]["passed"] and meta["verification"]["kld"] < 0.01
        assert meta["restored_on_load"] == ["model.embed_tokens.embed_scale"]
        prev = torch.are_deterministic_algorithms_enabled()
        torch.use_deterministic_algorithms(True, warn_only=True)  # uninitialized memory reads as NaN
        try:
            enable_loading()
            plain = AutoModelForCausalLM.from_pretrained(out, device_map="cpu")
            assert math.isnan(plain.model.embed_tokens.embed_scale.item())  # the bug, as transformers loads it
            assert restore_buffers(plain) == ["model.embed_tokens.embed_scale"]
            model, _ = llmq.load(out, device="cpu")
        finally:
            torch.use_deterministic_algorithms(prev)
        for m in (plain, model):
            assert m.model.embed_tokens.embed_scale.item() == pytest.approx(math.sqrt(128))
        card = TorchAoBackend.card_facts(meta, "me/x")
        assert "llmq.load" in card.python and "embed_scale" in card.note


def test_restore_buffers_leaves_other_models_alone(tiny_model_dir, tmp_path):
    import json

    import llmq
    from llmq.backends.torchao import restore_buffers

    out = llmq.quantize(str(tiny_model_dir), "int8-dynamic", device="cpu").save(tmp_path / "l")
    model, _ = llmq.load(out, device="cpu")
    assert restore_buffers(model) == []  # Llama's rotary inv_freq is a buffer of a module without int8 weights
    assert "restored_on_load" not in json.loads((out / "llmq.json").read_text())
