"""Perplexity with the protocol the GPTQ/AWQ papers and Hugging Face's guide use.

The text is joined with ``"\\n\\n"`` and tokenized once without special tokens; windows of ``seqlen``
tokens are scored with the standard shifted next-token loss. Without ``stride`` the windows do not
overlap (every token is scored once, the first of each window with no context: the papers'
numbers); with ``stride`` < ``seqlen`` each window advances by ``stride`` and scores only its last
``stride`` tokens, giving each scored token up to ``seqlen - stride`` tokens of context (lower,
closer to the model's true perplexity). Numbers from different protocols are not comparable, so
every result carries its protocol string.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from llmq.data import check_hub, local_file
from llmq.hub import hub_error
from llmq.errors import LlmqError

SOURCES = ("wikitext2", "c4")


@dataclass
class PerplexityResult:
    value: float
    tokens: int
    windows: int
    nll_sum: float
    protocol: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def load_text(source: str | Path) -> tuple[str, str]:
    """``(text, description)``: WikiText-2 raw test (local mirror under ``LLMQ_DATA_DIR`` or the Hub),
    the first C4 validation shard, or a local text file."""
    src = str(source)
    if src == "wikitext2":
        local = local_file("wikitext2", "wiki.test.raw")
        if local is not None:
            lines = local.read_text(encoding="utf-8").splitlines()
            return "\n\n".join(lines), "wikitext2 (wikitext-2-raw-v1 test, local mirror)"
        check_hub("wikitext2")
        try:
            import datasets

            ds = datasets.load_dataset("wikitext", "wikitext-2-raw-v1", split="test")
        except Exception as e:  # noqa: BLE001
            raise hub_error(e, "wikitext2", data=True) from e
        return "\n\n".join(ds["text"]), "wikitext2 (wikitext-2-raw-v1 test, Hub)"
    if src == "c4":
        check_hub("c4")
        try:
            import datasets

            ds = datasets.load_dataset(
                "allenai/c4", data_files={"validation": "en/c4-validation.00000-of-00008.json.gz"}, split="validation"
            )
        except Exception as e:  # noqa: BLE001
            raise hub_error(e, "c4", data=True) from e
        return "\n\n".join(ds["text"][:1100]), "c4 (en validation shard 0, first 1100 documents)"
    path = Path(src).expanduser()
    if not path.is_file():
        from llmq.errors import UnknownNameError

        if path.suffix or "/" in src:
            raise LlmqError(f"Perplexity text file not found: {path}")
        raise UnknownNameError("perplexity dataset", src, SOURCES)
    from llmq.safety import check_text_file

    check_text_file(path)  # the check calibration files get: random bytes have no perplexity
    return path.read_text(encoding="utf-8", errors="replace"), f"file {path.name}"


def windows(n_tokens: int, seqlen: int, stride: int | None = None, limit: int | None = None
            ) -> list[tuple[int, int, int]]:
    """``(begin, end, n_scored)`` per window; the scored tokens are the last ``n_scored`` of
    ``[begin, end)`` (the first token of a sequence has nothing to be predicted from)."""
    if seqlen < 2:
        raise LlmqError(f"seqlen must be >= 2, got {seqlen}.")
    stride = stride or seqlen
    if not 0 < stride <= seqlen:
        raise LlmqError(f"stride must be in 1..seqlen ({seqlen}), got {stride}.")
    out = []
    if stride == seqlen:
        for b in range(0, n_tokens - seqlen + 1, seqlen):
            out.append((b, b + seqlen, seqlen - 1))
    else:
        prev_end = 0
        for b in range(0, n_tokens - 1, stride):
            e = min(b + seqlen, n_tokens)
            scored = e - prev_end if b > 0 else e - b - 1
            if scored <= 0:
                break
            out.append((b, e, min(scored, e - b - 1)))
            prev_end = e
            if e == n_tokens:
                break
    if limit is not None:
        out = out[:limit]
    return out


def protocol_string(desc: str, seqlen: int, stride: int | None, n_windows: int, tokens: int) -> str:
    return f"{desc}, seqlen={seqlen}, stride={stride or seqlen}, windows={n_windows}, scored tokens={tokens}"


def tokenize(tokenizer: Any, source: str | Path = "wikitext2") -> tuple[Any, str]:
    """``(ids, description)``: the whole text tokenized once, with no BOS/EOS. A BOS only at the start
    of the stream (what the GPTQ reference code gets from Llama tokenizers) would change one token of
    the first window and make the number depend on the tokenizer's config; without it the protocol
    is the same for every tokenizer (and identical to the GPTQ code for tokenizers without a BOS)."""
    text, desc = load_text(source)
    return tokenizer(text, add_special_tokens=False, return_tensors="pt").input_ids[0], desc


def plan(n_tokens: int, desc: str, seqlen: int, stride: int | None, limit: int | None) -> list[tuple[int, int, int]]:
    """The windows to score; a ``limit`` beyond the data uses what exists and says so."""
    import warnings

    wins = windows(n_tokens, seqlen, stride, None)
    if not wins:
        raise LlmqError(f"{desc} has {n_tokens} tokens: fewer than one window of seqlen={seqlen}.")
    if limit is not None and limit > len(wins):
        warnings.warn(f"--limit {limit} is more than the {len(wins)} windows of seqlen={seqlen} in {desc}; "
                      f"using all {len(wins)}.", stacklevel=3)
    return wins[:limit] if limit is not None else wins


def perplexity(model: Any, tokenizer: Any, source: str | Path = "wikitext2", *, seqlen: int = 2048,
               stride: int | None = None, limit: int | None = None, progress: bool = True,
               on_window: Any = None, tokens: tuple[Any, str] | None = None) -> PerplexityResult:
    """Perplexity of ``model`` on ``source``. ``on_window(i, logits, targets)`` (optional) sees each
    window's scored logits, e.g. to compute KL divergence against a reference on the same windows.
    ``tokens`` = ``tokenize(tokenizer, source)`` done once, to share between models."""
    import torch
    from tqdm.auto import tqdm

    ids, desc = tokens if tokens is not None else tokenize(tokenizer, source)
    wins = plan(len(ids), desc, seqlen, stride, limit)
    device = next(model.parameters()).device
    nll_sum, n_tok = 0.0, 0
    with torch.inference_mode():
        for i, (b, e, k) in enumerate(tqdm(wins, desc="perplexity", unit="window", disable=not progress)):
            x = ids[b:e].unsqueeze(0).to(device)
            logits = model(x).logits[0, -k - 1:-1].float()
            targets = x[0, -k:]
            nll_sum += torch.nn.functional.cross_entropy(logits, targets, reduction="sum").item()
            n_tok += k
            if on_window is not None:
                on_window(i, logits, targets)
    value = math.exp(nll_sum / n_tok)
    return PerplexityResult(value, n_tok, len(wins), nll_sum, protocol_string(desc, seqlen, stride, len(wins), n_tok))


def gguf_perplexity(path: str | Path, tokenizer: Any, source: str = "wikitext2", *, seqlen: int = 2048,
                    stride: int | None = None, limit: int | None = None, threads: int | None = None,
                    tokens: Any = None, on_window: Any = None, progress: bool = False) -> Any:
    """llmq's perplexity protocol (``perplexity`` above) with llama.cpp computing the logits of the
    ``.gguf`` at ``path``."""
    from llmq.backends.gguf.runtime import LlamaCppLM

    lm = LlamaCppLM(path, n_ctx=seqlen, threads=threads)
    try:
        return perplexity(lm, tokenizer, source, seqlen=seqlen, stride=stride, limit=limit,
                          progress=progress, on_window=on_window, tokens=tokens)
    finally:
        lm.close()
