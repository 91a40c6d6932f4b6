"""``evaluate`` and ``compare``: every metric for one model, or for an original and its quantized copy
under the same protocol, with only one model in memory at a time."""

from __future__ import annotations

import gc
import os
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from llmq.errors import ConfigError, LlmqError, ModelNotFoundError

DEFAULT_SEQLEN = 2048
#: tasks evaluated when an accuracy gate is set but no --tasks were named
DEFAULT_GATE_TASKS = ("arc_easy", "piqa")
RESULT_KEYS = ("path", "size_bytes", "param_memory_bytes", "peak_rss_bytes", "load_time_s",
               "prefill_tokens_per_s", "decode_tokens_per_s", "perplexity", "tasks", "kld")


@dataclass
class EvalReport:
    """What ``llmq.evaluate`` returns. With a reference, ``to_dict()`` has the ``report.json`` shape
    (``original`` = the reference, ``quantized`` = the model); without, the model is under ``model``."""

    protocol: dict
    model: dict
    reference: dict | None = None
    gate: dict | None = None

    def to_dict(self) -> dict[str, Any]:
        if self.reference is None:
            return {"protocol": self.protocol, "model": self.model, "gate": self.gate}
        return {"protocol": self.protocol, "original": self.reference, "quantized": self.model, "gate": self.gate}

    def to_markdown(self) -> str:
        from llmq.eval.report import markdown

        return markdown(self.to_dict())


@dataclass
class _Handle:
    """A model to evaluate: a folder to load, or an already loaded pair."""

    label: str
    path: Path | None = None
    pair: tuple[Any, Any] | None = None
    trust_remote_code: bool = False
    #: the runtime it is scored on (``choose_runtime``'s); None: its plugin's first
    runtime: str | None = None

    def runtimes(self) -> tuple[str, ...]:
        """The runtimes it can be scored on, preferred first (a .gguf: llama.cpp, then transformers)."""
        if self.pair is not None:
            return (runtime_family(getattr(self.pair[0], "llmq_runtime", "transformers")),)
        return tuple(self.plugin().eval_runtimes())

    def tokenizer(self) -> Any:
        if self.pair is not None:
            return self.pair[1]
        return self.plugin().load_tokenizer(self.path, trust_remote_code=self.trust_remote_code)

    def plugin(self) -> Any:
        from llmq.schemes import plugin_of_folder

        return plugin_of_folder(self.path)

    def max_length(self) -> int | None:
        if self.pair is not None:
            from llmq.eval.loglik import max_length

            return max_length(self.pair[0])
        from llmq.models import read_json

        if not (self.path / "config.json").is_file():  # a plugin's output (a .gguf): its runtime's context
            return self.plugin().eval_context
        cfg = read_json(self.path / "config.json")
        cfg = cfg.get("text_config", cfg)
        v = cfg.get("max_position_embeddings") or cfg.get("n_positions")
        return int(v) if v else None


def _handle(model: Any, label: str, trust_remote_code: bool = False) -> _Handle:
    """Every model source ``run`` accepts (a model folder, a Hub id, a ``.gguf`` file or a folder
    holding one, None for the demo), an output a plugin recognises, or objects in memory. A folder
    with its own modeling code is refused unless ``trust_remote_code``."""
    if isinstance(model, (tuple, list)) and len(model) == 2:
        return _Handle(label, pair=(model[0], model[1]))
    if hasattr(model, "hf_model") and hasattr(model, "tokenizer"):  # a QuantizedModel
        return _Handle(label, path=model.saved_to, pair=None if model.saved_to else (model.hf_model, model.tokenizer),
                       trust_remote_code=model.source.trust_remote_code)
    if model is None or isinstance(model, (str, os.PathLike)):
        from llmq import safety

        p = Path(str(model)).expanduser() if model is not None else None
        if p is not None and p.is_dir() and (p / "config.json").is_file():
            safety.refuse_remote_code(p, trust_remote_code)  # before the tokenizer or weights load
            from llmq.weightfiles import check_safetensors_folder

            check_safetensors_folder(p, required=True)  # a config-only or pytorch_model.bin folder: one line
            return _Handle(label, path=p, trust_remote_code=trust_remote_code)
        if p is not None and p.exists():
            from llmq.backends.base import Backend
            from llmq.schemes import plugin_of_folder

            if plugin_of_folder(p) is not Backend:  # e.g. a plugin's non-transformers output
                return _Handle(label, path=p, trust_remote_code=trust_remote_code)
        from llmq.models import resolve_model

        # as `run` reads it: a .gguf is dequantized once into the cache, a Hub id downloaded
        local = resolve_model(None if model is None else str(model), trust_remote_code=trust_remote_code).local_dir()
        safety.refuse_remote_code(local, trust_remote_code)
        return _Handle(label, path=Path(local), trust_remote_code=trust_remote_code)
    raise LlmqError(f"Cannot evaluate a {type(model).__name__}: pass a folder, a .gguf file, a Hub id or a "
                    "(model, tokenizer) pair.")


def runtime_family(label: str) -> str:
    """``"transformers (dequantized GGUF)"`` -> ``"transformers"``: the runtime a model label names."""
    return str(label).split(" (", 1)[0]


def choose_runtime(handles: list[_Handle]) -> str:
    """One runtime for every model of a comparison, so a delta never mixes two runtimes' kernels: the
    first runtime (in the first model's preference) that all of them run on, else one line naming
    what each runs on."""
    options = [h.runtimes() for h in handles]
    common = [r for r in options[0] if all(r in o for o in options[1:])]
    if not common:
        sides = "; ".join(f"the {h.label} ({h.path or 'model in memory'}) runs on {' or '.join(o)}"
                          for h, o in zip(handles, options))
        raise LlmqError(f"No runtime runs both models, and a comparison across two runtimes would mix their kernels "
                        f"into the delta: {sides}. Compare two .gguf files (llama.cpp), or model folders / .gguf "
                        "files (transformers).")
    return common[0]


def check_same_tokenizer(a: Any, b: Any) -> None:
    """KLD and a shared perplexity protocol need identical tokenization: compare vocabularies and the
    ids of a probe string."""
    probe = "Quantization: 1,234 tokens ü ñ 日本 <tag> \n\n  end."
    va, vb = a.get_vocab(), b.get_vocab()
    if va != vb:
        raise LlmqError(f"The tokenizers differ (vocabularies of {len(va)} and {len(vb)} entries, not identical); "
                        "KL divergence and a shared protocol would be meaningless.")
    ia, ib = a.encode(probe), b.encode(probe)
    if ia != ib:
        raise LlmqError("The tokenizers differ (same vocabulary, but a probe string tokenizes differently); "
                        "KL divergence and a shared protocol would be meaningless.")


def split_tasks(tasks: str | Sequence[Any] | None) -> list[Any]:
    """A comma-separated string or a list; ``"none"`` (like ``--ppl none``) is no task."""
    if tasks is None:
        return []
    if isinstance(tasks, str):
        tasks = [t.strip() for t in tasks.split(",")]
    return [t for t in tasks if not (isinstance(t, str) and t.strip().lower() in ("", "none"))]


def evaluate(model: Any, *, ppl: str | os.PathLike | None = "wikitext2", tasks: str | Sequence[Any] | None = None,
             limit: int | None = None, seqlen: int | None = DEFAULT_SEQLEN, stride: int | None = None,
             reference: Any = None, device: str | None = None, batch_size: int = 16, speed: bool = True,
             progress: bool = True, kld_topk: int = 32, kld_max_full_bytes: int = 2 << 30,
             task_fields: str | dict[str, str] | None = None, trust_remote_code: bool = False) -> EvalReport:
    """Perplexity, task accuracy, cost and (with ``reference``) KL divergence of ``model``.

    ``model``/``reference``: a folder, a Hub id, or a loaded ``(model, tokenizer)`` pair. ``limit``
    caps both perplexity windows and examples per task. ``task_fields`` maps a task file's field
    names to the canonical ones (``"contexts=context_options,gold=label"`` or a dict). With a
    reference, both run the same protocol, the reference first (its distributions cached for the
    KLD), one model in memory at a time. Folders with their own modeling code need ``trust_remote_code``."""
    from llmq.eval import tasks as task_mod

    task_list = split_tasks(tasks)
    ours = [t for t in task_list if not (isinstance(t, str) and t.startswith("lm_eval:"))]
    harness = [t for t in task_list if isinstance(t, str) and t.startswith("lm_eval:")]
    specs = task_mod.resolve_tasks(ours, fields=task_fields)  # unknown task: one line, before any model loads
    for spec in specs:
        task_mod.check_rows(spec, limit)
    if harness:
        from llmq.eval import lm_eval_bridge

        if not lm_eval_bridge.available():
            from llmq.errors import MissingDependencyError

            raise MissingDependencyError("--tasks lm_eval:<task>", ["lm-eval"], "lm-eval")
    if limit is not None and limit < 1:
        raise LlmqError(f"--limit must be at least 1, got {limit}.")
    from llmq.safety import check_eval_options

    check_eval_options(seqlen=seqlen, stride=stride, batch_size=batch_size)
    ppl = None if ppl is None or str(ppl).lower() in ("", "none") else ppl
    target = _handle(model, "quantized" if reference is not None else "model", trust_remote_code)
    ref = _handle(reference, "original", trust_remote_code) if reference is not None else None
    tok = target.tokenizer()
    if ref is not None:
        check_same_tokenizer(ref.tokenizer(), tok)
    handles = [h for h in (ref, target) if h is not None]
    runtime = choose_runtime(handles)  # before any weight loads: one line if the two cannot share one
    for h in handles:
        h.runtime = runtime
    if ref is not None and progress and any(h.runtimes()[0] != runtime for h in handles):
        print(f"llmq eval: scoring both models on {runtime}, the one runtime they share", file=sys.stderr, flush=True)
    seqlen = _fit_seqlen(seqlen or DEFAULT_SEQLEN, handles)
    device = device or _default_device()

    protocol: dict[str, Any] = {"ppl": None, "tasks": {}, "runtime": runtime}
    tokens = cache = None
    if ppl is not None:
        from llmq.eval.perplexity import plan, tokenize

        tokens = tokenize(tok, ppl)
        wins = plan(len(tokens[0]), tokens[1], seqlen, stride, limit)
        n_scored = sum(k for _, _, k in wins)
    common = dict(ppl=ppl, specs=specs, harness=harness, limit=limit, seqlen=seqlen, stride=stride, device=device,
                  batch_size=batch_size, speed=speed, progress=progress, tokens=tokens)
    ref_result = None
    try:
        if ref is not None:
            state: dict[str, Any] = {}

            def collect(i: int, logits: Any, targets: Any) -> None:
                if "cache" not in state:
                    from llmq.eval.kld import ReferenceCache

                    state["cache"] = ReferenceCache(n_scored, logits.shape[-1], topk=kld_topk,
                                                    max_full_bytes=kld_max_full_bytes)
                state["cache"].add(i, logits, targets)

            ref_result = _evaluate_one(ref, protocol, on_window=collect if ppl is not None else None, **common)
            cache = state.get("cache")
        result = _evaluate_one(target, protocol, on_window=cache.compare if cache is not None else None, **common)
        if cache is not None:
            result["kld"] = cache.result(protocol["ppl"]).to_dict()
            protocol["kld"] = ("KL(original || quantized) per scored token of the perplexity windows, mean and "
                               f"99th percentile in nats; same_top = share of tokens where both argmaxes agree; "
                               f"{cache.description}")
    finally:
        if cache is not None:
            cache.close()
    return EvalReport(protocol=protocol, model=result, reference=ref_result)


def _default_device() -> str:
    from llmq.core import default_device

    return default_device()


def _fit_seqlen(seqlen: int, handles: list[_Handle]) -> int:
    limits = [m for m in (h.max_length() for h in handles) if m]
    if limits and seqlen > min(limits):
        warnings.warn(f"seqlen {seqlen} is longer than the model's maximum ({min(limits)}); using {min(limits)}.",
                      stacklevel=3)
        return min(limits)
    return seqlen


def _load(h: _Handle, device: str) -> tuple[Any, Any, float | None]:
    if h.pair is not None:
        return h.pair[0], h.pair[1], None
    from llmq.core import load

    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if h.runtime is not None and h.runtime != h.runtimes()[0]:  # e.g. a .gguf on transformers
            model, tok = h.plugin().load_on(h.path, h.runtime, device=device)
        else:
            model, tok = load(h.path, device=device, trust_remote_code=h.trust_remote_code)
    return model, tok, time.perf_counter() - t0


def _evaluate_one(h: _Handle, protocol: dict, *, ppl: Any, specs: list, harness: list, limit: int | None,
                  seqlen: int, stride: int | None, device: str, batch_size: int, speed: bool, progress: bool,
                  tokens: Any, on_window: Any) -> dict[str, Any]:
    from llmq.eval import cost
    from llmq.eval.tasks import run_task

    out: dict[str, Any] = dict.fromkeys(RESULT_KEYS)
    out["path"] = str(h.path) if h.path is not None else "(model object in memory)"
    out["size_bytes"] = cost.size_on_disk(h.path)
    out["tasks"] = {}
    if progress:
        print(f"llmq eval: {h.label}: {out['path']}", file=sys.stderr, flush=True)  # stdout: the report only
    with cost.PeakRSS() as peak:
        model, tok, load_s = _load(h, device)
        out["load_time_s"] = round(load_s, 3) if load_s is not None else None
        out["param_memory_bytes"] = cost.param_memory(model)
        out["runtime"] = getattr(model, "llmq_runtime", "transformers")  # e.g. "llama.cpp" for a .gguf
        from llmq.safety import check_model_output

        check_model_output(model, tok, f"The {h.label} ({out['path']})")
        if ppl is not None:
            from llmq.eval.perplexity import perplexity

            r = perplexity(model, tok, ppl, seqlen=seqlen, stride=stride, limit=limit, progress=progress,
                           on_window=on_window, tokens=tokens)
            out["perplexity"] = {"value": r.value, "tokens": r.tokens, "windows": r.windows, "protocol": r.protocol}
            protocol["ppl"] = r.protocol
        for spec in specs:
            res = run_task(model, tok, spec, limit=limit, batch_size=batch_size, progress=progress)
            out["tasks"][spec.name] = res
            protocol["tasks"][spec.name] = res["protocol"]
        if harness:
            from llmq.eval import lm_eval_bridge

            for name, res in lm_eval_bridge.run(model, tok, harness, limit=limit, batch_size=batch_size,
                                                progress=progress).items():
                out["tasks"][name] = res
                protocol["tasks"][name] = res["protocol"]
        if speed:
            s = cost.speed(model, tok)
            out["prefill_tokens_per_s"] = round(s["prefill_tokens_per_s"], 2)
            out["decode_tokens_per_s"] = round(s["decode_tokens_per_s"], 2)
            protocol["speed"] = f"{s['protocol']}, device {device}"
    out["peak_rss_bytes"] = peak.peak
    if h.pair is None:
        del model
    gc.collect()
    return out


def assess(model: Any, *, reference: Any = None, ppl: str | os.PathLike | None = "wikitext2",
           tasks: str | Sequence[Any] | None = None, limit: int | None = None, seqlen: int | None = DEFAULT_SEQLEN,
           stride: int | None = None, out_dir: str | os.PathLike | None = None, device: str | None = None,
           batch_size: int = 16, speed: bool = True, progress: bool = True, max_ppl_increase: Any = None,
           max_accuracy_loss: float | None = None, max_kld: float | None = None,
           task_fields: str | dict[str, str] | None = None, trust_remote_code: bool = False,
           note: Any = None) -> dict[str, Any]:
    """``evaluate`` plus the accuracy gate and the report files: the one pipeline behind ``compare``,
    ``llmq eval``, ``llmq compare`` and ``llmq run --eval``. Returns the ``report.json`` dict; with
    ``out_dir`` writes ``report.json``, ``report.md`` and ``report.png`` there (also when the gate
    fails). ``note(text)`` is told when the gate's default tasks are added."""
    from llmq.eval.gate import check_gate, gate_set, validate
    from llmq.safety import check_eval_options, check_report_dir

    validate(max_ppl_increase, max_accuracy_loss, max_kld)
    check_eval_options(seqlen=seqlen, stride=stride, batch_size=batch_size, limit=limit)
    check_report_dir(out_dir)  # an existing file as -o: one line before any model loads
    gated = gate_set(max_ppl_increase, max_accuracy_loss, max_kld)
    if gated and reference is None:
        raise LlmqError("A gate compares against the original: pass --reference.")
    if max_accuracy_loss is not None and not split_tasks(tasks):
        tasks = list(DEFAULT_GATE_TASKS)
        if note is not None:
            note(f"llmq eval: --max-accuracy-loss without --tasks: evaluating {', '.join(tasks)}")
    report = evaluate(model, ppl=ppl, tasks=tasks, limit=limit, seqlen=seqlen, stride=stride, reference=reference,
                      device=device, batch_size=batch_size, speed=speed, progress=progress, task_fields=task_fields,
                      trust_remote_code=trust_remote_code).to_dict()
    if gated:
        report["gate"] = check_gate(report, max_ppl_increase=max_ppl_increase, max_accuracy_loss=max_accuracy_loss,
                                    max_kld=max_kld).to_dict()
    if out_dir is not None:
        from llmq.eval.report import write_report

        write_report(report, out_dir)
    return report


def compare(original: Any, quantized: Any, *, ppl: str | os.PathLike | None = "wikitext2",
            tasks: str | Sequence[Any] | None = None, limit: int | None = None, seqlen: int | None = DEFAULT_SEQLEN,
            stride: int | None = None, out_dir: str | os.PathLike | None = None, device: str | None = None,
            batch_size: int = 16, speed: bool = True, progress: bool = True, max_ppl_increase: Any = None,
            max_accuracy_loss: float | None = None, max_kld: float | None = None,
            task_fields: str | dict[str, str] | None = None, trust_remote_code: bool = False) -> dict[str, Any]:
    """Evaluate both under one protocol; the ``report.json`` dict. With ``out_dir``, writes
    ``report.json``, ``report.md`` and ``report.png`` there (also when a gate fails). ``original=None``
    is the offline demo model, as everywhere in llmq."""
    from llmq.eval.gate import validate

    validate(max_ppl_increase, max_accuracy_loss, max_kld)
    if original is None:  # evaluate(reference=None) would silently drop the comparison
        from llmq.models import resolve_model

        original = str(resolve_model(None).local_dir())
    return assess(quantized, reference=original, ppl=ppl, tasks=tasks, limit=limit, seqlen=seqlen, stride=stride,
                  out_dir=out_dir, device=device, batch_size=batch_size, speed=speed, progress=progress,
                  max_ppl_increase=max_ppl_increase, max_accuracy_loss=max_accuracy_loss, max_kld=max_kld,
                  task_fields=task_fields, trust_remote_code=trust_remote_code)


def original_of(path: str | os.PathLike) -> str:
    """What an llmq folder was quantized from (read from its ``llmq.json``): the ``.gguf`` file itself
    where llama.cpp requantized it, else the local folder of its weights (a GGUF source dequantized)."""
    from llmq.meta import read_meta
    from llmq.models import resolve_model

    path = Path(path)
    meta = read_meta(path) or {}
    src = meta.get("source") or {}
    name = src.get("name")
    if src.get("kind") == "gguf" and name and not str(name).endswith(".gguf") and not Path(name).exists():
        name = None  # the offline demo: its GGUF ships in a package; `name` is its Hub id, not a path
    if not src:
        raise LlmqError(f"{path} has no llmq.json: cannot tell which model it was quantized from.")
    source = resolve_model(name)
    if source.kind == "gguf" and (meta.get("quantization_config") or {}).get("source_format") == "gguf":
        return str(source.path)
    return str(source.local_dir())


# -- everything `run` will do after quantizing, checked before it loads a weight ----------------------------
def check_eval_request(*, tasks: Any = None, ppl: Any = None, max_ppl_increase: Any = None,
                       max_accuracy_loss: Any = None, max_kld: Any = None) -> None:
    """``run --eval``: gate thresholds, task names and files, the perplexity file, all without a model."""
    from llmq.eval.gate import validate
    from llmq.eval.tasks import check_rows, resolve_task

    validate(max_ppl_increase=max_ppl_increase, max_accuracy_loss=max_accuracy_loss, max_kld=max_kld)
    for t in split_tasks(tasks):
        if not (isinstance(t, str) and t.startswith("lm_eval:")):
            check_rows(resolve_task(t))
    if ppl is not None and str(ppl).lower() != "none" and ("/" in str(ppl) or Path(str(ppl)).suffix):
        if not Path(str(ppl)).expanduser().is_file():
            raise ConfigError(f"--ppl file not found: {ppl}")
        from llmq.safety import check_text_file

        check_text_file(Path(str(ppl)).expanduser())
