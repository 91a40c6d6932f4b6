"""Score and time a ``.gguf`` on llama.cpp itself (llama-cpp-python), with llmq's own protocols.

``LlamaCppLM`` looks like a transformers causal LM to llmq's evaluators: ``model(input_ids).logits``
(batch x tokens x vocab, float32 torch tensor), ``parameters()`` (for the device) and ``config``
(for the context limit). So ``perplexity``, ``kld.ReferenceCache`` and ``loglik`` run unchanged and
write the same protocol strings; only the numbers come from llama.cpp's kernels. Each row of a batch
is one fresh llama.cpp sequence (the KV cache is cleared), the right padding of ``_score_full`` is
harmless because causal attention never looks forward.

``speed`` measures what ``llama-bench`` reports: prefill of ``n_prompt`` tokens in one batch
(``pp512``) and ``n_gen`` single-token decodes (``tg128``), batch 1, fresh context each repetition.
"""

from __future__ import annotations

import os
import statistics
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from llmq.errors import LlmqError, MissingDependencyError


def _llama_cpp() -> Any:
    try:
        import llama_cpp
    except ImportError as e:
        raise MissingDependencyError("Scoring a .gguf on llama.cpp", ["llama-cpp-python"], "gguf") from e
    return llama_cpp


def default_threads() -> int:
    return max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1))


#: the context a scoring LlamaCppLM opens (logits for every position: n_ctx x vocab floats)
DEFAULT_CTX = 2048


class LlamaCppLM:
    """A ``.gguf`` behind the slice of the transformers model interface llmq's evaluators use."""

    #: what the evaluator's report records as the runtime that computed the numbers
    llmq_runtime = "llama.cpp"

    def __init__(self, path: str | Path, *, n_ctx: int = DEFAULT_CTX, threads: int | None = None, verbose: bool = False):
        llama_cpp = _llama_cpp()
        self.path = Path(path)
        if not self.path.is_file():
            raise LlmqError(f"GGUF file not found: {self.path}")
        self.n_ctx = n_ctx
        self.llm = llama_cpp.Llama(model_path=str(self.path), n_ctx=n_ctx, n_batch=n_ctx, n_ubatch=n_ctx,
                                   logits_all=True, n_threads=threads or default_threads(),
                                   n_threads_batch=threads or default_threads(), verbose=verbose)
        # close before interpreter teardown (llama-cpp-python's own __del__ fails once modules are gone)
        import weakref

        weakref.finalize(self, self.llm.close)
        self.config = SimpleNamespace(max_position_embeddings=n_ctx, vocab_size=self.llm.n_vocab(),
                                      name_or_path=str(self.path))
        self._param = None

    def parameters(self):
        import torch

        if self._param is None:
            self._param = torch.zeros(1)
        yield self._param

    def eval(self) -> "LlamaCppLM":
        return self

    def row_logits(self, tokens: list[int]) -> Any:
        """float32 numpy ``(len(tokens), vocab)`` logits of one sequence from an empty cache."""
        import numpy as np

        if len(tokens) > self.n_ctx:
            raise LlmqError(f"{len(tokens)} tokens exceed the llama.cpp context n_ctx={self.n_ctx}.")
        self.llm.reset()
        self.llm._ctx.kv_cache_clear()  # reset() alone keeps the cache for prefix reuse
        self.llm.eval(tokens)
        return np.array(self.llm.scores[: len(tokens)], dtype=np.float32, copy=True)

    def forward(self, input_ids: Any, logits_to_keep: int = 0, attention_mask: Any = None, use_cache: Any = None) -> Any:
        """Logits of each row from an empty cache (``attention_mask``/``use_cache`` are ignored:
        rows are scored one by one, so no padding is attended). No ``past_key_values``: the
        evaluators see that and score every request in full."""
        import torch

        ids = input_ids.tolist() if hasattr(input_ids, "tolist") else list(input_ids)
        if ids and isinstance(ids[0], int):
            ids = [ids]
        rows = []
        for row in ids:
            lg = self.row_logits([int(t) for t in row])
            rows.append(torch.from_numpy(lg[-logits_to_keep:] if logits_to_keep else lg))
        return SimpleNamespace(logits=torch.stack(rows))

    __call__ = forward

    def buffers(self):
        return iter(())

    def weight_bytes(self) -> int:
        """Bytes of the weights llama.cpp maps (the file's tensor data; its parameter memory)."""
        return self.path.stat().st_size

    def complete(self, prompt: str, max_new_tokens: int = 24) -> str:
        """Greedy continuation (the sample ``llmq run`` prints)."""
        self.llm.reset()
        self.llm._ctx.kv_cache_clear()
        out = self.llm(prompt, max_tokens=max_new_tokens, temperature=0.0, top_k=1)
        return out["choices"][0]["text"]

    def measure_speed(self, prefill_tokens: int, decode_tokens: int, repeats: int) -> dict[str, Any]:
        """llmq's speed keys (``llmq.eval.cost.speed``) measured on llama.cpp with ``speed``."""
        r = speed(self.path, n_prompt=prefill_tokens, n_gen=decode_tokens, repetitions=repeats)
        return {"prefill_tokens_per_s": r.prefill_tok_s, "decode_tokens_per_s": r.decode_tok_s,
                "protocol": r.protocol}

    def close(self) -> None:
        if getattr(self, "llm", None) is not None:
            self.llm.close()
            self.llm = None


def load_tokenizer(path: str | Path, fallback: str | Path | None = None) -> Any:
    """The Hugging Face tokenizer stored in the GGUF (transformers reads it from the file alone, never
    from a ``tokenizer_config.json`` beside it: ``llmq.models.gguf_view``), or ``fallback``'s."""
    from transformers import AutoTokenizer

    from llmq.models import gguf_view

    if fallback is not None:
        return AutoTokenizer.from_pretrained(fallback, trust_remote_code=False)
    with gguf_view(Path(path)) as (d, name):
        return AutoTokenizer.from_pretrained(d, gguf_file=name, trust_remote_code=False)


# ---------------------------------------------------------------------------------------------
# speed
# ---------------------------------------------------------------------------------------------
@dataclass
class SpeedResult:
    prefill_tok_s: float
    decode_tok_s: float
    n_prompt: int
    n_gen: int
    threads: int
    repetitions: int
    file_bytes: int
    protocol: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class _Decoder:
    """One llama.cpp context driven through the low-level API, as ``llama-bench`` drives it:
    ``llama_decode`` on batches of token ids, no Python sampler. Flash attention off, as
    llama-cpp-python (and so :class:`LlamaCppLM`) runs by default: on this project's 2-core AVX-512/AMX
    CPU it halves Q8_0 decode after a 512-token prompt (``llama-bench -d 512``: 51.7 tok/s with
    ``-fa 1`` vs 104.7 with ``-fa 0``). Shared by :func:`speed` and :class:`LlamaCppRunner`."""

    def __init__(self, path: Path, *, n_ctx: int, n_batch: int, threads: int):
        llama_cpp = _llama_cpp()
        self.lib = llama_cpp
        self.llm = llama_cpp.Llama(model_path=str(path), n_ctx=n_ctx, n_batch=n_batch, n_ubatch=n_batch,
                                   n_threads=threads, n_threads_batch=threads, logits_all=False,
                                   flash_attn=False, verbose=False)
        import weakref

        weakref.finalize(self, self.llm.close)  # as LlamaCppLM: before interpreter teardown
        self.ctx = self.llm._ctx.ctx
        self.vocab = self.llm.n_vocab()
        self.mem = llama_cpp.llama_get_memory(self.ctx)

    def clear(self) -> None:
        self.lib.llama_memory_clear(self.mem, True)

    def decode(self, tokens: list[int], pos0: int) -> None:
        """Evaluate ``tokens`` at positions ``pos0...`` of sequence 0; logits for the last one."""
        lib, n = self.lib, len(tokens)
        batch = lib.llama_batch_init(n, 0, 1)
        try:
            for i, t in enumerate(tokens):
                batch.token[i] = t
                batch.pos[i] = pos0 + i
                batch.n_seq_id[i] = 1
                batch.seq_id[i][0] = 0
                batch.logits[i] = i == n - 1
            batch.n_tokens = n
            rc = lib.llama_decode(self.ctx, batch)
            if rc != 0:
                raise LlmqError(f"llama_decode failed ({rc})")
        finally:
            lib.llama_batch_free(batch)

    def argmax(self) -> int:
        """Greedy next token from the last decoded position's logits (read in place)."""
        import numpy as np

        ptr = self.lib.llama_get_logits_ith(self.ctx, -1)
        return int(np.ctypeslib.as_array(ptr, shape=(self.vocab,)).argmax())

    def sync(self) -> None:
        self.lib.llama_synchronize(self.ctx)

    def close(self) -> None:
        self.llm.close()


def speed(path: str | Path, *, n_prompt: int = 512, n_gen: int = 128, threads: int | None = None,
          repetitions: int = 3, seed: int = 0) -> SpeedResult:
    """llama-bench's ``pp<n_prompt>`` and ``tg<n_gen>`` through llama-cpp-python's low-level API
    (:class:`_Decoder`: ``llama_decode`` on one context, KV cache cleared between tests), batch 1,
    mean of ``repetitions`` after one warm-up, random token ids as llama-bench uses."""
    import random

    threads = threads or default_threads()
    path = Path(path)
    dec = _Decoder(path, n_ctx=n_prompt + n_gen + 8, n_batch=n_prompt, threads=threads)
    try:
        rng = random.Random(seed)

        def prefill() -> float:
            dec.clear()
            toks = [rng.randrange(dec.vocab) for _ in range(n_prompt)]
            t = time.perf_counter()
            dec.decode(toks, 0)
            dec.sync()
            return n_prompt / (time.perf_counter() - t)

        def generate() -> float:
            dec.clear()
            tok = rng.randrange(dec.vocab)
            t = time.perf_counter()
            for i in range(n_gen):
                dec.decode([tok], i)
            dec.sync()
            return n_gen / (time.perf_counter() - t)

        prefill(), generate()  # warm-up, as llama-bench
        pp = statistics.mean(prefill() for _ in range(repetitions))
        tg = statistics.mean(generate() for _ in range(repetitions))
    finally:
        dec.close()
    return SpeedResult(pp, tg, n_prompt, n_gen, threads, repetitions, path.stat().st_size,
                       f"llama.cpp via llama-cpp-python: pp{n_prompt} + tg{n_gen}, batch 1, threads={threads}, "
                       f"flash attention off, mean of {repetitions} after 1 warm-up (llama-bench -fa 0's tests)")


#: the context a bench runner opens (prompt + generated tokens must fit)
RUNNER_CTX = 4096


class LlamaCppRunner:
    """``llmq bench``'s runner for ``.gguf`` files: a real greedy generation on llama.cpp (prompt in
    batches of 512, then one ``llama_decode`` + argmax per token), timed like the torch runner's
    ``generate``. Batch 1 only (``max_batch``): llama.cpp's batch-1 decode is what its users run
    and what ``llama-bench``'s ``tg`` measures; ``bench`` skips larger batch sizes for it."""

    max_batch = 1
    max_context = RUNNER_CTX

    def __init__(self, spec: str, *, device: str = "cpu", threads: int | None = None):
        if device != "cpu":
            raise LlmqError(f"bench runs .gguf files on llama.cpp's CPU build; --device {device} is not supported.")
        self.path = Path(spec)
        if not self.path.is_file():
            raise LlmqError(f"GGUF file not found: {self.path}")
        self.threads = threads or default_threads()
        self.dec: _Decoder | None = None

    def load(self) -> tuple[float, str]:
        t0 = time.perf_counter()
        self.dec = _Decoder(self.path, n_ctx=RUNNER_CTX, n_batch=512, threads=self.threads)
        dt = time.perf_counter() - t0
        self.tok = load_tokenizer(self.path)
        self.size_mb = self.path.stat().st_size / 1e6
        return dt, f"llama.cpp ({self.threads} threads)"

    def generate(self, prompt_ids: list[list[int]], new_tokens: int) -> tuple[float, float]:
        if len(prompt_ids) != 1:
            raise LlmqError("the llama.cpp runner benches batch 1 only.")
        prompt = [int(t) for t in prompt_ids[0]]
        if len(prompt) + new_tokens > RUNNER_CTX:
            raise LlmqError(f"prompt + new tokens ({len(prompt) + new_tokens}) exceed the runner's context "
                            f"({RUNNER_CTX}).")
        dec = self.dec
        dec.clear()
        t0 = time.perf_counter()
        for i in range(0, len(prompt), 512):
            dec.decode(prompt[i:i + 512], i)
        tok = dec.argmax()
        ttft = time.perf_counter() - t0
        pos = len(prompt)
        for _ in range(new_tokens - 1):
            dec.decode([tok], pos)
            pos += 1
            tok = dec.argmax()
        return ttft, time.perf_counter() - t0
