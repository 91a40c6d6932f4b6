"""KL divergence of a model's next-token distributions from a reference model's, on the perplexity
windows: the numbers llama.cpp's ``perplexity --kl-divergence`` reports (mean KLD, 99th percentile,
how often both models pick the same top-1 token).

Only one model is in memory at a time: the reference runs first and its distributions are cached.
Two cache formats, picked by size:

- **exact**: the reference's full log-probabilities, float32, in a temporary disk memmap, when
  ``tokens x vocab x 4`` bytes fit in ``max_full_bytes`` (default 2 GiB: small vocabularies or
  short slices). The KLD is then exact.
- **top-k**: the reference's ``k`` (default 32) most likely tokens and their log-probabilities, the
  remaining probability mass kept as one "rest" bucket; the other model's distribution is collapsed
  onto the same ``k + 1`` bins. Merging bins never increases KL divergence, so this is a **lower
  bound** of the exact value, tight when the reference's tail beyond its top ``k`` tokens is small
  (the usual case for a language model's next-token distribution; the cached rest mass is reported).
"""

from __future__ import annotations

import math
import os
import tempfile
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np


@dataclass
class KLDResult:
    mean: float
    p99: float
    same_top: float
    tokens: int
    protocol: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class ReferenceCache:
    """Collects the reference model's distributions window by window (``add``), then scores another
    model's logits on the same windows (``compare``)."""

    def __init__(self, n_tokens: int, vocab: int, *, topk: int = 32, max_full_bytes: int = 2 << 30,
                 mode: str | None = None):
        self.n_tokens, self.vocab, self.topk = n_tokens, vocab, min(topk, vocab)
        self.mode = mode or ("exact" if n_tokens * vocab * 4 <= max_full_bytes else "topk")
        self._pos = 0
        self._offsets: list[tuple[int, int]] = []
        self.top1 = np.zeros(n_tokens, dtype=np.int64)
        if self.mode == "exact":
            fd, self._file = tempfile.mkstemp(prefix="llmq-kld-", suffix=".f32")
            os.close(fd)
            self.logp = np.memmap(self._file, dtype=np.float32, mode="w+", shape=(max(n_tokens, 1), vocab))
        else:
            self._file = None
            self.top_idx = np.zeros((n_tokens, self.topk), dtype=np.int64)
            self.top_logp = np.zeros((n_tokens, self.topk), dtype=np.float32)
            self.rest_logp = np.zeros(n_tokens, dtype=np.float32)
        self.kl = np.zeros(0, dtype=np.float64)
        self.same = np.zeros(0, dtype=bool)

    @property
    def description(self) -> str:
        if self.mode == "exact":
            return "exact (reference's full distribution cached)"
        return f"top-{self.topk} + rest bucket (lower bound of the exact KLD)"

    def add(self, window: int, logits: Any, targets: Any = None) -> None:
        import torch

        logp = torch.log_softmax(logits.float(), dim=-1).cpu()
        n = logp.shape[0]
        a, b = self._pos, self._pos + n
        self._offsets.append((a, b))
        self.top1[a:b] = logp.argmax(-1).numpy()
        if self.mode == "exact":
            self.logp[a:b] = logp.numpy()
        else:
            vals, idx = logp.topk(self.topk, dim=-1)
            self.top_idx[a:b] = idx.numpy()
            self.top_logp[a:b] = vals.numpy()
            self.rest_logp[a:b] = _log1mexp(torch.logsumexp(vals.double(), -1)).float().numpy()
        self._pos = b

    def compare(self, window: int, logits: Any, targets: Any = None) -> None:
        import torch

        a, b = self._offsets[window]
        q = torch.log_softmax(logits.float(), dim=-1).cpu()  # float32: a 2048 x 150k window stays ~1 GB
        if q.shape[0] != b - a:
            raise ValueError("window size differs from the reference's")
        if self.mode == "exact":
            p = torch.from_numpy(np.asarray(self.logp[a:b]))
            kl = (p.exp() * (p - q)).sum(-1, dtype=torch.float64)
        else:
            idx = torch.from_numpy(self.top_idx[a:b])
            p_top = torch.from_numpy(self.top_logp[a:b]).double()
            p_rest = torch.from_numpy(self.rest_logp[a:b]).double()
            q_top = q.gather(1, idx).double()
            q_rest = _log1mexp(torch.logsumexp(q_top, -1))
            kl = (p_top.exp() * (p_top - q_top)).sum(-1) + torch.where(
                p_rest > -math.inf, p_rest.exp() * (p_rest - q_rest), torch.zeros_like(p_rest))
        same = q.argmax(-1).numpy() == self.top1[a:b]
        self.kl = np.concatenate([self.kl, kl.clamp(min=0).numpy()])
        self.same = np.concatenate([self.same, same])

    def result(self, protocol: str) -> KLDResult:
        if not len(self.kl):
            raise ValueError("no tokens compared")
        return KLDResult(mean=float(self.kl.mean()), p99=float(np.percentile(self.kl, 99)),
                         same_top=float(self.same.mean()), tokens=int(len(self.kl)),
                         protocol=f"{protocol}; {self.description}")

    def close(self) -> None:
        if self._file is not None:
            del self.logp
            try:
                os.unlink(self._file)
            except OSError:  # pragma: no cover
                pass
            self._file = None

    def __del__(self) -> None:  # pragma: no cover - best effort cleanup
        try:
            self.close()
        except Exception:  # noqa: BLE001
            pass


def _log1mexp(x: Any) -> Any:
    """log(1 - exp(x)) for x <= 0, stable; -inf when the top-k already hold all the mass."""
    import torch

    x = x.clamp(max=0)
    return torch.where(x > -0.693, torch.log(-torch.expm1(x)), torch.log1p(-torch.exp(x)))


def kld_from_probs(p: Any, q: Any) -> float:
    """KL(p || q) of two probability vectors, in nats (the toy-distribution reference in tests)."""
    p, q = np.asarray(p, dtype=np.float64), np.asarray(q, dtype=np.float64)
    m = p > 0
    return float((p[m] * np.log(p[m] / q[m])).sum())
