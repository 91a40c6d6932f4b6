"""Tiny random models of the architecture families users quantize, for the architecture matrix
(``tests/acceptance/test_architectures.py``, ``scripts/bench_architectures.py``).

Each family is built from transformers' own config class, with random weights from a fixed seed,
and saved as fp32 safetensors with a tokenizer llama.cpp's converter reads. Two choices matter:

* **Peaked outputs.** A random model's next-token distribution is near uniform, and a KL divergence
  between two near-uniform distributions is small whatever the weights are. The weights are drawn
  at ``std`` and the final norm's gain is set so the logits' standard deviation is ``logit_std``
  (~3 nats of entropy over 512 tokens instead of 6.2), so garbage shows as a large KL.
* **Shapes every scheme takes.** ``hidden=256``, ``intermediate=512``: every Linear's in_features
  divides GPTQ/AWQ/QAT group sizes (32..256) and llama.cpp's K-quant block of 256 (smaller rows
  fall back to other ggml types, and the K-quants would go untested).

The tokenizer is a 512-piece SentencePiece model trained on Python's own docs (offline, in a
second): llama.cpp's converter reads ``tokenizer.model`` for every family here but GPT-2, whose
converter accepts only BPE tokenizers whose pre-tokenizer it knows (it hashes an encoding); GPT-2
therefore takes a ``tokenizer`` argument (the tests pass SmolLM2's). Phi-3's vocabulary also holds
``<|endoftext|>`` and ``<|end|>``, which llama.cpp looks up by text when it loads a Phi-3 GGUF.

The matrix step (``run_cell``: quantize -> save -> ``llmq.load`` -> KL to the original, and the
bits the decoder blocks take on disk) runs the library's verbs, hence this module's layer (L4).
"""

from __future__ import annotations

import io
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable


@dataclass(frozen=True)
class Family:
    """One architecture family: its transformers config and model classes and how to fill them."""

    config_cls: str
    model_cls: str
    #: builds the config's keyword arguments from the common sizes
    kwargs: Callable[[dict[str, Any]], dict[str, Any]]
    #: the final norm, whose gain sets how peaked the logits are
    final_norm: str = "model.norm"
    #: the embedding is multiplied by sqrt(hidden) in forward (Gemma): drawn that much smaller
    scaled_embedding: bool = False
    #: the norm computes ``x * (1 + weight)`` (Gemma)
    norm_offset: bool = False
    #: llama.cpp's converter reads this family's vocabulary from ``tokenizer.model``
    spm: bool = True
    #: tokens llama.cpp looks up by text when it loads this architecture (Phi-3: its end-of-turn token)
    special_tokens: tuple[str, ...] = ()
    notes: str = ""


def _decoder(c: dict[str, Any], **kw: Any) -> dict[str, Any]:
    return dict(vocab_size=c["vocab"], hidden_size=c["hidden"], intermediate_size=c["intermediate"],
                num_hidden_layers=c["layers"], num_attention_heads=c["heads"], num_key_value_heads=c["kv_heads"],
                max_position_embeddings=1024, bos_token_id=c["bos"], eos_token_id=c["eos"], pad_token_id=c["pad"], **kw)


def _head_dim(c: dict[str, Any]) -> int:
    return c["hidden"] // c["heads"]


FAMILIES: dict[str, Family] = {
    "llama": Family("LlamaConfig", "LlamaForCausalLM", lambda c: _decoder(c, tie_word_embeddings=True)),
    "mistral": Family("MistralConfig", "MistralForCausalLM", lambda c: _decoder(c, tie_word_embeddings=False)),
    "qwen2": Family("Qwen2Config", "Qwen2ForCausalLM", lambda c: _decoder(c, tie_word_embeddings=True),
                    notes="q/k/v biases"),
    "qwen3": Family("Qwen3Config", "Qwen3ForCausalLM",
                    lambda c: _decoder(c, head_dim=_head_dim(c), tie_word_embeddings=True), notes="q/k norms"),
    "gemma2": Family("Gemma2Config", "Gemma2ForCausalLM",
                     lambda c: _decoder(c, head_dim=_head_dim(c), query_pre_attn_scalar=_head_dim(c), sliding_window=64,
                                        tie_word_embeddings=True),
                     scaled_embedding=True, norm_offset=True, notes="logit soft-capping, sqrt(hidden) embedding scale"),
    "gemma3": Family("Gemma3TextConfig", "Gemma3ForCausalLM",
                     lambda c: _decoder(c, head_dim=_head_dim(c), query_pre_attn_scalar=_head_dim(c), sliding_window=64,
                                        tie_word_embeddings=True),
                     scaled_embedding=True, norm_offset=True, notes="q/k norms, sqrt(hidden) embedding scale"),
    "phi3": Family("Phi3Config", "Phi3ForCausalLM", lambda c: _decoder(c, tie_word_embeddings=False),
                   special_tokens=("<|endoftext|>", "<|end|>"), notes="fused qkv_proj and gate_up_proj"),
    "gpt2": Family("GPT2Config", "GPT2LMHeadModel",
                   lambda c: dict(vocab_size=c["vocab"], n_embd=c["hidden"], n_inner=None,
                                  n_layer=c["layers"], n_head=c["heads"], n_positions=1024, bos_token_id=c["bos"],
                                  eos_token_id=c["eos"], pad_token_id=c["pad"], tie_word_embeddings=True),
                   final_norm="transformer.ln_f", spm=False,
                   notes="transformers Conv1D layers, not nn.Linear; MLP 4 x hidden (llama.cpp's converter assumes it)"),
    "opt": Family("OPTConfig", "OPTForCausalLM",
                  lambda c: dict(vocab_size=c["vocab"], hidden_size=c["hidden"], ffn_dim=c["intermediate"],
                                 num_hidden_layers=c["layers"], num_attention_heads=c["heads"],
                                 word_embed_proj_dim=c["hidden"], max_position_embeddings=1024, bos_token_id=c["bos"],
                                 eos_token_id=c["eos"], pad_token_id=c["pad"], tie_word_embeddings=True),
                  final_norm="model.decoder.final_layer_norm", notes="learned positions, biases everywhere"),
}


def spm_tokenizer(path: str | Path, vocab_size: int = 512, special_tokens: tuple[str, ...] = ()) -> Any:
    """Train a SentencePiece BPE (byte fallback) on Python's own docs, write ``tokenizer.model`` into
    ``path`` and return transformers' tokenizer read from it (what both sides of GGUF read)."""
    import pydoc_data.topics
    import sentencepiece as spm
    from transformers import LlamaTokenizer

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(list(pydoc_data.topics.topics.values())), model_writer=buf, vocab_size=vocab_size,
        model_type="bpe", byte_fallback=True, character_coverage=1.0, unk_id=0, bos_id=1, eos_id=2, pad_id=3,
        pad_piece="<pad>", minloglevel=2, num_threads=1, seed_sentencepiece_size=100000,
        **({"user_defined_symbols": list(special_tokens)} if special_tokens else {}))
    (path / "tokenizer.model").write_bytes(buf.getvalue())
    tok = LlamaTokenizer.from_pretrained(path)
    tok.pad_token = "<pad>"
    return tok


def tiny_causal_lm(family: str, path: str | Path, *, hidden: int = 256, intermediate: int = 512, layers: int = 2,
                   heads: int = 4, kv_heads: int = 2, seed: int = 0, std: float = 0.1, embedding_std: float = 0.1,
                   logit_std: float = 3.0, tokenizer: Any = None) -> Path:
    """Save a random fp32 ``family`` model (a key of ``FAMILIES``) with its tokenizer to ``path``.
    ``tokenizer``: any transformers tokenizer (default: a 512-piece SentencePiece model, written as
    ``tokenizer.model`` too)."""
    import torch
    import transformers

    if family not in FAMILIES:
        from llmq.errors import UnknownNameError

        raise UnknownNameError("architecture family", family, FAMILIES)
    fam = FAMILIES[family]
    path = Path(path)
    tok = tokenizer if tokenizer is not None else spm_tokenizer(path, special_tokens=fam.special_tokens)
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    sizes = dict(vocab=len(tok), hidden=hidden, intermediate=intermediate, layers=layers, heads=heads,
                 kv_heads=kv_heads, bos=tok.bos_token_id, eos=tok.eos_token_id, pad=pad)
    cfg = getattr(transformers, fam.config_cls)(**fam.kwargs(sizes))
    torch.manual_seed(seed)
    model = getattr(transformers, fam.model_cls)(cfg).eval()
    emb = model.get_input_embeddings().weight
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.normal_(0, std if p is not emb else embedding_std / (hidden ** 0.5 if fam.scaled_embedding else 1))
        _set_logit_std(model, fam, logit_std, tok)
    model.save_pretrained(path, safe_serialization=True)
    tok.save_pretrained(path)
    return path


def _set_logit_std(model: Any, fam: Family, target: float, tok: Any) -> None:
    """Scale the final norm so the logits over a fixed text have standard deviation ``target``."""
    import torch

    ids = torch.tensor([sample_ids(tok, 64)])
    std = model(ids).logits.float().std().item()
    g = target / std
    norm = model.get_submodule(fam.final_norm)
    if fam.norm_offset:
        norm.weight.copy_(g * (1 + norm.weight) - 1)
    else:
        norm.weight.mul_(g)
        if getattr(norm, "bias", None) is not None:
            norm.bias.mul_(g)


def sample_ids(tok: Any, n: int = 64) -> list[int]:
    """``n`` token ids of a fixed English text (Python's docs), the matrix's evaluation sequence."""
    import pydoc_data.topics

    text = " ".join(list(pydoc_data.topics.topics.values())[:4])
    ids = tok(text, add_special_tokens=False)["input_ids"][:n]
    if len(ids) < n:
        raise ValueError(f"the sample text gives only {len(ids)} tokens")
    return ids


# -- the matrix: quantize -> save -> reload -> KL to the original ---------------------------------
#: a decoder block's tensors: ``model.layers.3.``, ``transformer.h.0.``, ``model.decoder.layers.1.``, GGUF ``blk.0.``
BLOCK = re.compile(r"(^|\.)(layers|h|blk)\.\d+\.")


def calibration_texts() -> list[str]:
    """~60 kB of Python's docs: enough windows for the matrix's calibration and QAT steps, small
    enough that tokenizing it costs nothing."""
    import pydoc_data.topics

    return list(pydoc_data.topics.topics.values())[4:24]


def fast_overrides(scheme: str) -> dict[str, Any]:
    """The smallest settings that still run ``scheme``'s real algorithm on a tiny model in seconds:
    8 calibration windows of 64 tokens for GPTQ/AWQ (with fewer tokens than a layer has inputs,
    GPTQ's Hessian is singular and it does worse than plain rounding), 2 of 32 for int8-static,
    2 QAT steps."""
    from llmq.schemes import get_scheme

    backend = get_scheme(scheme).backend
    texts = calibration_texts()
    if backend == "gptqmodel":
        return dict(calibration=texts, n_samples=8, seqlen=64)
    if backend == "int8-static":
        return dict(calibration=texts, n_samples=2, seqlen=32)
    if backend == "qat":
        return dict(data=texts, steps=2, seqlen=32, batch_size=2, warmup_steps=1, eval_windows=1, lr=1e-4)
    return {}


def _numel(shape: Any) -> int:
    out = 1
    for d in shape:
        out *= int(d)
    return out


def block_bytes(folder: str | Path) -> int:
    """Bytes the decoder blocks' tensors take in a saved output (safetensors folder or .gguf)."""
    folder = Path(folder)
    ggufs = list(folder.glob("*.gguf"))
    if ggufs:
        import gguf

        return sum(int(t.n_bytes) for f in ggufs for t in gguf.GGUFReader(str(f)).tensors if BLOCK.search(t.name))
    from safetensors import safe_open

    total = 0
    for f in folder.glob("*.safetensors"):
        with safe_open(str(f), "pt") as st:
            for k in st.keys():
                if BLOCK.search(k):
                    sl = st.get_slice(k)
                    total += _numel(sl.get_shape()) * _itemsize(sl.get_dtype())
    return total


def _itemsize(dtype: str) -> int:
    return {"F64": 8, "I64": 8, "U64": 8, "F32": 4, "I32": 4, "U32": 4, "F16": 2, "BF16": 2, "I16": 2, "U16": 2,
            "I8": 1, "U8": 1, "BOOL": 1, "F8_E4M3": 1, "F8_E5M2": 1}[dtype]


def logits(model: Any, ids: list[int]) -> Any:
    import torch

    with torch.inference_mode():
        out = model(torch.tensor([ids], device=next(model.parameters()).device))
    return out.logits[0].float().cpu()


def kl_top1(ref: Any, other: Any) -> tuple[float, float]:
    """Mean per-token KL(ref || other) in nats, and how often both pick the same top-1 token."""
    import torch

    p, q = ref.log_softmax(-1).double(), other.log_softmax(-1).double()
    kl = (p.exp() * (p - q)).sum(-1).clamp(min=0).mean().item()
    return kl, (ref.argmax(-1) == other.argmax(-1)).float().mean().item()


def reference_logits(model_dir: str | Path, ids: list[int]) -> Any:
    import torch
    from transformers import AutoModelForCausalLM

    m = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    return logits(m, ids)


def run_cell(model_dir: str | Path, scheme: str, out: str | Path, *, ids: list[int] | None = None,
             ref: Any = None) -> dict[str, Any]:
    """Quantize ``model_dir`` with ``scheme`` (``fast_overrides``), save to ``out``, reload with
    ``llmq.load`` and compare its logits on ``ids`` with the original's. Returns ``kl``, ``top1``,
    ``bits`` (stored bits per decoder-block parameter: 32 for fp32, ~8 or ~4 when the blocks really
    were quantized) and ``seconds``."""
    from transformers import AutoTokenizer

    from llmq.core import load, quantize

    t0, c0 = time.perf_counter(), time.process_time()
    ids = ids if ids is not None else sample_ids(AutoTokenizer.from_pretrained(model_dir))
    ref = ref if ref is not None else reference_logits(model_dir, ids)
    qm = quantize(str(model_dir), scheme, device="cpu", **fast_overrides(scheme))
    qm.save(out, verify=False)  # the matrix measures the KL itself, with bounds for peaked tiny models
    del qm
    model, _ = load(out, device="cpu")
    kl, top1 = kl_top1(ref, logits(model, ids))
    bits = 32 * block_bytes(out) / block_bytes(model_dir)
    return {"kl": kl, "top1": top1, "bits": bits, "seconds": time.perf_counter() - t0,
            "cpu_seconds": time.process_time() - c0}
