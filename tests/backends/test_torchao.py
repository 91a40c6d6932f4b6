"""The torchao plugin (int8-dynamic): int8 per-row embeddings and lm_head by default (issue #11),
stored once when tied, reloading with identical logits; the opt-out keeps them float."""

from __future__ import annotations


def test_int8_dynamic_embeddings_are_int8_tied_and_reload(tiny_model_dir, tmp_path):
    import torch
    from torchao.quantization import Int8Tensor

    import llmq
    from llmq.models import folder_size

    x = torch.tensor([list(range(5, 45))])
    q = llmq.quantize(str(tiny_model_dir), "int8-dynamic", device="cpu")
    assert isinstance(q.model.model.embed_tokens.weight, Int8Tensor)
    assert q.model.lm_head.weight is q.model.model.embed_tokens.weight
    with torch.no_grad():
        before = q.model(x).logits
    out = q.save(tmp_path / "d")
    model, _ = llmq.load(out, device="cpu")
    with torch.no_grad():
        assert torch.equal(model(x).logits, before)
    assert isinstance(model.lm_head.weight, Int8Tensor)
    keep = llmq.quantize(str(tiny_model_dir), "int8-dynamic", device="cpu", quantize_embeddings=False)
    assert not isinstance(keep.model.model.embed_tokens.weight, Int8Tensor)
    emb = keep.model.model.embed_tokens.weight.numel()
    saved = folder_size(keep.save(tmp_path / "k")) - folder_size(out)
    assert saved > 0.7 * 3 * emb  # fp32 -> int8 per row, stored once
