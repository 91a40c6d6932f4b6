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
               tie_word_embeddings: bool = True, initializer_range: float = 0.02) -> Path:
    """Save a random Llama (fp32, safetensors) with a working tokenizer to ``path``. At the default
    ``initializer_range`` its next-token distributions are nearly uniform; 0.1 makes them peaked
    (entropy ~4 of 6.2 nats), so that a broken output is far from it in KL divergence."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    path = Path(path)
    tok = tiny_tokenizer(vocab_size)
    cfg = LlamaConfig(
        vocab_size=len(tok), hidden_size=hidden, intermediate_size=intermediate, num_hidden_layers=layers,
        num_attention_heads=heads, num_key_value_heads=kv_heads, max_position_embeddings=1024,
        tie_word_embeddings=tie_word_embeddings, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id, initializer_range=initializer_range,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(cfg).eval()
    model.save_pretrained(path, safe_serialization=True)
    tok.save_pretrained(path)
    return path


def tiny_gemma(path: str | Path, *, version: int = 3, hidden: int = 128, intermediate: int = 256, layers: int = 2,
               heads: int = 4, kv_heads: int = 2, head_dim: int = 32, vocab_size: int = 512, seed: int = 0,
               initializer_range: float = 0.1) -> Path:
    """Save a random Gemma-3 (``Gemma3ForCausalLM``, text only) or Gemma-2 with tied embeddings (fp32,
    safetensors) and a working tokenizer to ``path``. What makes them Gemma: the input embedding is
    multiplied by sqrt(hidden) (``embed_scale``, a non-persistent buffer), RMSNorm scales by
    (1 + weight), sliding-window layers, and (Gemma-2) soft-capped logits. Peaked by default
    (``initializer_range`` 0.1, see ``tiny_llama``)."""
    import torch
    from transformers import Gemma2Config, Gemma2ForCausalLM, Gemma3ForCausalLM, Gemma3TextConfig

    path = Path(path)
    tok = tiny_tokenizer(vocab_size)
    kw = dict(vocab_size=len(tok), hidden_size=hidden, intermediate_size=intermediate, num_hidden_layers=layers,
              num_attention_heads=heads, num_key_value_heads=kv_heads, head_dim=head_dim,
              max_position_embeddings=1024, sliding_window=64, tie_word_embeddings=True,
              initializer_range=initializer_range, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
              pad_token_id=tok.pad_token_id)
    if version not in (2, 3):
        raise ValueError(f"version must be 2 or 3, got {version!r}")
    cfg, cls = (Gemma3TextConfig(**kw), Gemma3ForCausalLM) if version == 3 else (Gemma2Config(**kw), Gemma2ForCausalLM)
    torch.manual_seed(seed)
    model = cls(cfg).eval()
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


#: Llama shapes for scale checks (vocab is the tokenizer's): Llama-2-7B, Llama-3.2-3B, TinyLlama-1.1B
SCALE_SHAPES: dict[str, dict[str, Any]] = {
    "7B": {"hidden": 4096, "intermediate": 11008, "layers": 32, "heads": 32, "kv_heads": 32, "tie": False},
    "3B": {"hidden": 3072, "intermediate": 8192, "layers": 28, "heads": 24, "kv_heads": 8, "tie": True},
    "1B": {"hidden": 2048, "intermediate": 5632, "layers": 22, "heads": 32, "kv_heads": 4, "tie": False},
}
#: the 7B's widths and embeddings with 2 layers: a run's end (packing, saving) at 7B widths, for a
#: scheme too slow to run 32 layers here (AWQ: hours); not a size the cost model fits
SCALE_SHAPES["7B-2L"] = {**SCALE_SHAPES["7B"], "layers": 2}


def random_llama_streamed(path: str | Path, tokenizer: Any, *, hidden: int, intermediate: int, layers: int,
                          heads: int, kv_heads: int, tie: bool = False, dtype: str = "bfloat16", seed: int = 0,
                          max_shard_bytes: int = 2 * 10**9, std: float = 0.02) -> Path:
    """Write a random Llama of any size with little RAM: tensors made one at a time (each from its own
    generator seeded by ``seed`` and its name, so a tensor does not depend on the others) into
    safetensors shards of at most ``max_shard_bytes`` (one shard in memory at a time), with
    transformers' index file, config and ``tokenizer``. Norms are ones, the rest N(0, ``std``)."""
    import json
    import zlib

    import torch
    from accelerate import init_empty_weights
    from safetensors.torch import save_file
    from transformers import LlamaConfig, LlamaForCausalLM

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    cfg = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=intermediate, num_hidden_layers=layers,
        num_attention_heads=heads, num_key_value_heads=kv_heads, max_position_embeddings=4096,
        tie_word_embeddings=tie, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id, dtype=dtype, architectures=["LlamaForCausalLM"],
    )
    with init_empty_weights():
        meta = LlamaForCausalLM(cfg)
    params = [(n, tuple(p.shape)) for n, p in meta.named_parameters()]  # tied: once
    tdt = getattr(torch, dtype)
    size = torch.empty((), dtype=tdt).element_size()
    shards: list[list[tuple[str, tuple[int, ...]]]] = [[]]
    used = 0
    for n, shape in params:
        b = size * int(torch.Size(shape).numel())
        if shards[-1] and used + b > max_shard_bytes:
            shards.append([])
            used = 0
        shards[-1].append((n, shape))
        used += b
    names = ["model.safetensors"] if len(shards) == 1 else \
        [f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))]
    weight_map, total = {}, 0
    for fname, shard in zip(names, shards):
        tensors = {}
        for n, shape in shard:
            if n.endswith("norm.weight"):
                t = torch.ones(shape, dtype=tdt)
            else:
                g = torch.Generator().manual_seed(seed * 1_000_003 + zlib.crc32(n.encode()))
                t = (torch.randn(shape, generator=g) * std).to(tdt)
            tensors[n] = t
            weight_map[n] = fname
            total += t.numel() * size
        save_file(tensors, str(path / fname), metadata={"format": "pt"})
        del tensors
    if len(names) > 1:
        (path / "model.safetensors.index.json").write_text(
            json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2) + "\n")
    cfg.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def zero_embeddings(model: Any) -> Any:
    """Zero a quantized model's input embeddings (tied: the head too), in memory or, for an output a
    streaming plugin already wrote (``llmq.streaming.WrittenOutput``), in its files: finite weights,
    uniform logits, the garbage ``llmq.verify`` must catch. Returns ``model``."""
    if hasattr(model, "get_input_embeddings"):
        model.get_input_embeddings().weight.data.zero_()
        return model
    from safetensors import safe_open
    from safetensors.torch import save_file

    for f in sorted(model.folder.glob("*.safetensors")):
        with safe_open(str(f), "pt") as st:
            meta, tensors = st.metadata(), {k: st.get_tensor(k) for k in st.keys()}
        hit = [k for k in tensors if k.endswith("embed_tokens.weight") or k.endswith("wte.weight")]
        for k in hit:
            tensors[k] = tensors[k].zero_()
        if hit:
            save_file(tensors, str(f), metadata=meta)
    return model
