"""``bench``: prefill and decode speed, time to first token, peak memory and load/compile time of
several models, measured in one run and shown as ratios to the first.

Each model runs in its own child process (``python -m llmq.benchmark --worker``), one after another,
so peak RSS and load time are its own and no model's threads or caches slow the next. A model is
a spec string: a folder (llmq output or original), ``demo`` (the offline SmolLM2), a Hub id, or
a ``.gguf`` (run on llama.cpp by the GGUF plugin's ``bench_runner``, batch 1); ``SPEC@eager`` /
``SPEC@compile`` forces the torch mode (default ``auto``: on CPU compiled through
:mod:`llmq.fastpath` for torchao-quantized folders, eager otherwise; on other devices always eager,
since the fast path's Inductor settings are tuned for CPU and a CUDA compile per shape costs
minutes: ask for ``@compile`` there).

Runtime hooks: a plugin whose outputs transformers does not run returns a runner from
``Backend.bench_runner`` (the GGUF plugin: llama.cpp); :func:`register_runner` adds one chosen by a
predicate on the spec. A runner implements :class:`Runner` (``load`` and ``generate``; optional
``max_batch``, ``size_mb``).

What is measured per batch size, ``samples`` times after one warm-up (which compiles): one
greedy ``generate`` of ``new_tokens`` tokens after a ``prompt_tokens`` prompt (WikiText-2 text
when available, else repeated ids). TTFT = time to the first new token; prefill tok/s =
batch x prompt / TTFT; decode tok/s = batch x (new_tokens - 1) / (total - TTFT). Medians.
On CUDA the clock is read after ``torch.cuda.synchronize()`` (kernels run asynchronously) and
each row also reports the peak GPU memory allocated by torch (``torch.cuda.max_memory_allocated``,
reset before the batch size's warm-up: weights + KV cache + activations).

``bench(..., timeout=s)`` bounds each model's child process; the child reports each batch size's
row as soon as it is measured, so a timeout keeps the rows already done (:class:`BenchTimeout`).
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Protocol, Sequence

from llmq.errors import ConfigError, LlmqError, ModelNotFoundError


#: how a worker child reports an ``LlmqError`` on stderr, for the parent to show as its one line
ERROR_PREFIX = "LLMQ_BENCH_ERROR "


class BenchTimeout(LlmqError):
    """A model's bench child ran past ``timeout``; ``rows`` holds the batch sizes it finished."""

    def __init__(self, message: str, rows: list["BenchRow"]):
        super().__init__(message)
        self.rows = rows


# -- runners ------------------------------------------------------------------------------------
class Runner(Protocol):
    """What a runtime provides to ``bench``. ``load`` returns (load seconds, description);
    ``generate`` runs one greedy generation and returns (TTFT s, total s)."""

    def load(self) -> tuple[float, str]: ...

    def generate(self, prompt_ids: list[list[int]], new_tokens: int) -> tuple[float, float]: ...


_RUNNERS: list[tuple[Callable[[str], bool], Callable[..., Runner]]] = []


def register_runner(matches: Callable[[str], bool], factory: Callable[..., Runner]) -> None:
    """Use ``factory(spec, device=, threads=)`` for specs where ``matches(spec)`` is true; the last
    registered match wins, the torch runner is the fallback."""
    _RUNNERS.append((matches, factory))


def _runner_for(spec: str, device: str, threads: int | None) -> Runner:
    for matches, factory in reversed(_RUNNERS):
        if matches(spec):
            return factory(spec, device=device, threads=threads)
    path, _ = _split_mode(spec)
    local = Path(path).expanduser()
    if path != "demo" and local.exists():
        from llmq.schemes import plugin_recognising

        owner = plugin_recognising(local)
        runner = owner.bench_runner(local, device=device, threads=threads) if owner else None
        if runner is not None:
            return runner
    return TorchRunner(spec, device=device, threads=threads)


def _split_mode(spec: str) -> tuple[str, str]:
    path, _, mode = spec.rpartition("@") if "@" in spec else (spec, "", "auto")
    if mode not in ("auto", "eager", "compile"):
        raise ConfigError(f"Unknown bench mode {mode!r} in {spec!r}; use @eager, @compile or nothing.")
    return path, mode


def _check_spec(spec: str) -> None:
    """Reject, before any model runs, what would fail only when its turn comes (a typo in the last
    model would otherwise cost the minutes the first ones take). A spec a registered runner claims
    is that runner's to check; an existing path is left to the loader (plugins recognise folders
    :func:`~llmq.models.resolve_model` does not); ``demo`` and anything else go through
    ``resolve_model``, which for a path that does not exist only classifies it (no disk, no network)."""
    path, _ = _split_mode(spec)
    if any(matches(spec) for matches, _ in _RUNNERS):
        return
    from llmq.models import resolve_model

    if path == "demo":
        resolve_model(None)  # one-line ModelNotFoundError when the demo is not installed
        return
    if Path(path).expanduser().exists():
        return
    if path.endswith(".gguf"):
        raise ConfigError(f"bench: {path}: no such file.")
    try:
        resolve_model(path, weights=False)  # a Hub id passes; a missing folder or a non-id fails
    except ModelNotFoundError as e:
        raise ConfigError(f"bench: {e}") from None


class _FirstTokenClock:
    """A ``generate`` streamer that notes when the first new token arrives (the first ``put`` is
    the prompt)."""

    def __init__(self) -> None:
        self.calls = 0
        self.first: float | None = None

    def put(self, value: Any) -> None:
        self.calls += 1
        if self.calls == 2 and self.first is None:
            self.first = time.perf_counter()

    def end(self) -> None:
        pass


class TorchRunner:
    """transformers + llmq.load, eager or compiled by :func:`llmq.fastpath.compile_for_cpu`."""

    def __init__(self, spec: str, *, device: str = "cpu", threads: int | None = None):
        self.path, self.mode = _split_mode(spec)
        self.device = device
        self.model = None

    def load(self) -> tuple[float, str]:
        from llmq.core import load
        from llmq.fastpath import compile_for_cpu, is_torchao_quantized
        from llmq.models import resolve_model

        src = resolve_model(None if self.path == "demo" else self.path)
        folder = src.local_dir()
        t0 = time.perf_counter()
        self.model, self.tok = load(folder, device=self.device)
        on_cpu = str(self.device).startswith("cpu")
        cfg = getattr(self.model, "config", None)
        self.max_context = getattr(cfg, "max_position_embeddings", None) or getattr(cfg, "n_positions", None)
        compiled = self.mode == "compile" or (self.mode == "auto" and on_cpu and is_torchao_quantized(self.model))
        if compiled:
            compile_for_cpu(self.model)
        dt = time.perf_counter() - t0
        self.folder = folder
        return dt, "compiled" if compiled else "eager"

    def generate(self, prompt_ids: list[list[int]], new_tokens: int) -> tuple[float, float]:
        import torch

        ids = torch.tensor(prompt_ids, device=self.device)
        clock = _FirstTokenClock()
        pad = self.tok.pad_token_id if self.tok.pad_token_id is not None else self.tok.eos_token_id
        sync = _synchronizer(self.device)
        with torch.inference_mode():
            sync()
            t0 = time.perf_counter()
            self.model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=new_tokens,
                                min_new_tokens=new_tokens, do_sample=False, pad_token_id=pad, streamer=clock)
            sync()  # the streamer's first token was copied to the CPU, so TTFT is already synchronized
            total = time.perf_counter() - t0
        return (clock.first or time.perf_counter()) - t0, total


def _synchronizer(device: Any) -> Callable[[], None]:
    """Wait for queued kernels on CUDA devices (timing without it measures only the launches)."""
    import torch

    if str(device).startswith("cuda") and torch.cuda.is_available():
        return lambda: torch.cuda.synchronize(device)
    return lambda: None


def _gpu_peak(device: Any, reset: bool = False) -> float | None:
    """Peak GPU memory torch allocated on ``device`` since the last reset, in MB; None off CUDA."""
    import torch

    if not (str(device).startswith("cuda") and torch.cuda.is_available()):
        return None
    if reset:
        torch.cuda.reset_peak_memory_stats(device)
    return torch.cuda.max_memory_allocated(device) / 1e6


# -- results ------------------------------------------------------------------------------------
@dataclass
class BenchRow:
    model: str
    mode: str
    batch: int
    prefill_tok_s: float
    decode_tok_s: float
    ttft_s: float
    load_s: float
    first_call_s: float  # warm-up generate: includes compilation when compiled
    peak_rss_mb: float
    size_mb: float | None = None
    samples: int = 1
    ratios: dict[str, float] = field(default_factory=dict)
    peak_gpu_mb: float | None = None  # torch.cuda.max_memory_allocated for this batch size; None off CUDA

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _prompt(tok: Any, n: int, batch: int) -> list[list[int]]:
    ids: list[int] = []
    try:
        from llmq.eval.perplexity import load_text

        text, _ = load_text("wikitext2")
        ids = tok(text[: 20 * n * batch], add_special_tokens=False)["input_ids"]
    except Exception:  # noqa: BLE001 - speed does not depend on which tokens
        pass
    if len(ids) < n * batch:
        ids = [(i * 7919) % max(2, len(tok) - 1) + 1 for i in range(n * batch)]
    return [ids[i * n:(i + 1) * n] for i in range(batch)]


def _peak_rss_mb() -> float:
    """This process's peak resident memory: ``VmHWM`` (reset at exec; ``ru_maxrss`` is not, so a
    child started from a large parent would report the parent's peak)."""
    try:
        for line in open("/proc/self/status"):
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def bench_one(spec: str, *, prompt_tokens: int = 512, new_tokens: int = 128, batch_sizes: Sequence[int] = (1, 8),
              threads: int | None = None, device: str = "cpu", samples: int = 3,
              on_row: Callable[[BenchRow], None] | None = None) -> list[BenchRow]:
    """Measure one model in this process (the worker side of :func:`bench`); ``on_row`` is called
    with each batch size's row as soon as it is measured."""
    import torch

    if threads:
        torch.set_num_threads(threads)
    runner = _runner_for(spec, device, threads)
    most = getattr(runner, "max_batch", None)
    fits = [b for b in batch_sizes if most is None or b <= most]
    if not fits:
        raise ConfigError(f"bench {spec}: its runtime runs batch sizes up to {most}; "
                          f"--batch-sizes {','.join(map(str, batch_sizes))} leaves nothing to measure.")
    load_s, mode = runner.load()
    size = getattr(runner, "size_mb", None)
    folder = getattr(runner, "folder", None)
    if size is None and folder is not None:
        from llmq.models import folder_size

        size = folder_size(folder) / 1e6
    tok = getattr(runner, "tok", None)
    ctx = getattr(runner, "max_context", None)
    if ctx and prompt_tokens + new_tokens > ctx:
        raise ConfigError(f"bench {spec}: prompt + new tokens ({prompt_tokens} + {new_tokens}) exceed the model's "
                          f"context of {ctx} tokens; lower --prompt-tokens or --new-tokens.")
    rows = []
    for b in batch_sizes:
        if b not in fits:
            continue  # e.g. llama.cpp's runner: batch 1 only (the table shows no row for 8)
        prompt = _prompt(tok, prompt_tokens, b) if tok is not None else [[1] * prompt_tokens] * b
        _gpu_peak(device, reset=True)
        t0 = time.perf_counter()
        runner.generate(prompt, new_tokens)
        first = time.perf_counter() - t0
        ttfts, decs = [], []
        for _ in range(samples):
            ttft, total = runner.generate(prompt, new_tokens)
            ttfts.append(ttft)
            decs.append(b * (new_tokens - 1) / max(total - ttft, 1e-9))
        ttft = statistics.median(ttfts)
        rows.append(BenchRow(spec, mode, b, b * prompt_tokens / ttft, statistics.median(decs), ttft, load_s, first,
                             _peak_rss_mb(), size, samples, peak_gpu_mb=_gpu_peak(device)))
        if on_row is not None:
            on_row(rows[-1])
    return rows


def bench(models: Sequence[str], *, prompt_tokens: int = 512, new_tokens: int = 128,
          batch_sizes: Sequence[int] = (1, 8), threads: int | None = None, device: str = "cpu",
          samples: int = 3, isolate: bool = True, nice: int = 0, timeout: float | None = None) -> list[BenchRow]:
    """Bench ``models`` one after another (each in a child process when ``isolate``) and add each
    row's ratios to the first model's row of the same batch size. ``timeout`` (seconds, isolated
    runs only) bounds each child; past it :class:`BenchTimeout` carries the rows finished so far.
    Every spec is checked (:func:`_check_spec`) before the first model loads."""
    if not models:
        raise ConfigError("bench needs at least one model.")
    if prompt_tokens < 1 or new_tokens < 2:
        raise ConfigError("bench needs prompt_tokens >= 1 and new_tokens >= 2.")
    if samples < 1:
        raise ConfigError(f"samples must be >= 1, got {samples!r}.")
    if not batch_sizes or any(isinstance(b, bool) or not isinstance(b, int) or b < 1 for b in batch_sizes):
        raise ConfigError(f"batch sizes must be positive integers (at least one), got {list(batch_sizes)!r}.")
    kw = dict(prompt_tokens=prompt_tokens, new_tokens=new_tokens, batch_sizes=tuple(batch_sizes), threads=threads,
              device=device, samples=samples)
    if timeout is not None and (not isolate or timeout <= 0):
        raise ConfigError("bench timeout needs isolate=True and a positive number of seconds.")
    for m in models:
        _check_spec(m)
    rows: list[BenchRow] = []
    for m in models:
        if isolate:
            cmd = [sys.executable, "-m", "llmq.benchmark", "--worker", json.dumps({"spec": m, **kw})]
            if nice:
                cmd = ["nice", "-n", str(nice), *cmd]
            try:
                out = subprocess.run(cmd, capture_output=True, text=True, env=os.environ.copy(), timeout=timeout)
            except subprocess.TimeoutExpired as e:
                done = _child_rows(e.stdout)
                rows += done
                add_ratios(rows)
                raise BenchTimeout(f"bench of {m} ran past {timeout:g} s ({len(done)} of {len(batch_sizes)} batch "
                                   "sizes done).", rows) from None
            if out.returncode != 0:
                lines = (out.stderr or out.stdout).strip().splitlines()
                ours = [ln[len(ERROR_PREFIX):] for ln in lines if ln.startswith(ERROR_PREFIX)]
                if ours:  # a one-line error of llmq's own, already phrased for the user
                    raise ConfigError(ours[-1])
                raise ConfigError(f"bench of {m} failed: {(lines or ['no output'])[-1]}")
            rows += _child_rows(out.stdout)
        else:
            rows += bench_one(m, **kw)
    add_ratios(rows)
    return rows


def _child_rows(stdout: str | bytes | None) -> list[BenchRow]:
    """The rows a worker printed (one ``LLMQ_BENCH_ROW`` line per batch size)."""
    if isinstance(stdout, bytes):
        stdout = stdout.decode(errors="replace")
    return [BenchRow(**json.loads(l[len("LLMQ_BENCH_ROW "):])) for l in (stdout or "").splitlines()
            if l.startswith("LLMQ_BENCH_ROW ")]


def add_ratios(rows: list[BenchRow]) -> None:
    base = {}
    for r in rows:
        base.setdefault(r.batch, r)
    for r in rows:
        b = base[r.batch]
        r.ratios = {
            "prefill": round(r.prefill_tok_s / b.prefill_tok_s, 3),
            "decode": round(r.decode_tok_s / b.decode_tok_s, 3),
            "ttft": round(r.ttft_s / b.ttft_s, 3),
        }
        if r.size_mb and b.size_mb:
            r.ratios["size"] = round(r.size_mb / b.size_mb, 3)


def format_table(rows: Sequence[BenchRow]) -> str:
    """One Markdown table; ratios are to the first model at the same batch size. A peak GPU memory
    column is added when any row was measured on CUDA."""
    gpu = any(r.peak_gpu_mb is not None for r in rows)
    head = ("| model | mode | batch | prefill tok/s | decode tok/s | TTFT s | load s | first call s | peak RSS MB "
            "| size MB | prefill x | decode x |" + (" peak GPU MB |" if gpu else ""))
    lines = [head, "|" + "|".join(["---"] * (13 if gpu else 12)) + "|"]
    for r in rows:
        lines.append(
            f"| {r.model} | {r.mode} | {r.batch} | {r.prefill_tok_s:.1f} | {r.decode_tok_s:.1f} | {r.ttft_s:.3f} "
            f"| {r.load_s:.1f} | {r.first_call_s:.1f} | {r.peak_rss_mb:.0f} | "
            f"{'' if r.size_mb is None else f'{r.size_mb:.1f}'} | {r.ratios.get('prefill', 1):.2f} "
            f"| {r.ratios.get('decode', 1):.2f} |"
            + ((" |" if r.peak_gpu_mb is None else f" {r.peak_gpu_mb:.0f} |") if gpu else ""))
    return "\n".join(lines)


def _worker(arg: str) -> None:
    kw = json.loads(arg)
    spec = kw.pop("spec")
    try:
        bench_one(spec, **kw, on_row=lambda r: print("LLMQ_BENCH_ROW " + json.dumps(r.to_dict()), flush=True))
    except LlmqError as e:  # the parent shows the child's last stderr line: make it this one
        print(f"{ERROR_PREFIX}{e}", file=sys.stderr, flush=True)
        sys.exit(2)


if __name__ == "__main__":  # pragma: no cover - exercised through bench(isolate=True)
    if len(sys.argv) == 3 and sys.argv[1] == "--worker":
        _worker(sys.argv[2])
    else:
        sys.exit("usage: python -m llmq.benchmark --worker JSON (use llmq.bench or `llmq bench`)")
