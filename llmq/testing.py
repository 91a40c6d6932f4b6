"""Tiny random models for tests and examples: built from a config in a second, no download."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def tiny_tokenizer(vocab_size: int = 512) -> Any:
    """A byte-level BPE trained on Python's own docs (always present, offline)."""
    import pydoc_data.topics
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=["<|endoftext|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False,
    )
    tok.train_from_iterator(list(pydoc_data.topics.topics.values()), trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<|endoftext|>", eos_token="<|endoftext|>",
        unk_token="<|endoftext|>", pad_token="<|endoftext|>",
    )


def tiny_llama(path: str | Path, *, hidden: int = 128, intermediate: int = 256, layers: int = 2,
               heads: int = 4, kv_heads: int = 2, vocab_size: int = 512, seed: int = 0,
               tie_word_embeddings: bool = True) -> Path:
    """Save a random Llama (fp32, safetensors) with a working tokenizer to ``path``."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    path = Path(path)
    tok = tiny_tokenizer(vocab_size)
    cfg = LlamaConfig(
        vocab_size=len(tok), hidden_size=hidden, intermediate_size=intermediate, num_hidden_layers=layers,
        num_attention_heads=heads, num_key_value_heads=kv_heads, max_position_embeddings=1024,
        tie_word_embeddings=tie_word_embeddings, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(cfg).eval()
    model.save_pretrained(path, safe_serialization=True)
    tok.save_pretrained(path)
    return path


def rtn_fake_quantize_(model: Any, bits: int, group_size: int, *, sym: bool = False) -> Any:
    """In place: round-to-nearest min-max quantize-dequantize every decoder ``nn.Linear`` weight
    (``lm_head`` and embeddings untouched). The naive baseline every calibrated method must beat."""
    import torch

    for name, mod in model.named_modules():
        if isinstance(mod, torch.nn.Linear) and ".layers." in f".{name}":
            w = mod.weight.data.float()
            o, i = w.shape
            g = i if group_size == -1 else group_size
            w = w.reshape(o, i // g, g)
            if sym:
                scale = w.abs().amax(-1, keepdim=True).clamp(min=1e-8) / (2 ** (bits - 1) - 1)
                q = torch.clamp(torch.round(w / scale), -(2 ** (bits - 1)), 2 ** (bits - 1) - 1)
                deq = q * scale
            else:
                lo, hi = w.amin(-1, keepdim=True), w.amax(-1, keepdim=True)
                scale = (hi - lo).clamp(min=1e-8) / (2 ** bits - 1)
                zero = torch.round(-lo / scale)
                q = torch.clamp(torch.round(w / scale) + zero, 0, 2 ** bits - 1)
                deq = (q - zero) * scale
            mod.weight.data = deq.reshape(o, i).to(mod.weight.dtype)
    return model
