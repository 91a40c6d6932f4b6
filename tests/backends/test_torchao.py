"""The torchao plugin (int8-dynamic): int8 per-row embeddings and lm_head by default (issue #11),
stored once when tied, reloading with identical logits; the opt-out keeps them float."""

from __future__ import annotations


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
