"""Task accuracy from JSON Lines files in the three shapes the field uses, and a small registry of
named tasks (local copies under ``LLMQ_DATA_DIR/tasks/`` or the Hugging Face Hub).

Shapes (field names configurable through ``TaskSpec.fields``):

- ``multiple_choice``: ``{"query", "choices": [...], "gold": int}``; each choice is scored as a
  continuation of the prompt; ``acc`` = argmax log-likelihood is gold, ``acc_norm`` = argmax of
  log-likelihood divided by the choice's length in characters (lm-eval's ``acc_norm``).
- ``lm``: ``{"context", "continuation"}``; ``acc`` = greedy decoding reproduces the continuation
  exactly (every token is the argmax), ``ppl`` = exp(-mean per-example log-likelihood) (lm-eval's
  LAMBADA perplexity).
- ``schema``: ``{"contexts": [...], "continuation", "gold": int}`` (WinoGrande's partial scoring):
  the continuation is scored after each context; ``acc`` = the gold context scores highest.

Prompts match lm-evaluation-harness: arc_easy is ``"Question: {q}\\nAnswer:"`` + ``" {choice}"``,
piqa ``"Question: {goal}\\nAnswer:"`` + ``" {choice}"``, hellaswag ``"{query}"`` + ``" {ending}"``,
lambada ``"{context}"`` + ``" {last word}"`` (target delimiter ``" "``).
"""

from __future__ import annotations

import json
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from llmq.errors import LlmqError, UnknownNameError
from llmq.registry import Registry

SHAPES = ("multiple_choice", "lm", "schema")
#: canonical field -> what a row must hold, per shape
SHAPE_FIELDS = {
    "multiple_choice": ("query", "choices", "gold"),
    "lm": ("context", "continuation"),
    "schema": ("contexts", "continuation", "gold"),
}


class TaskDataError(LlmqError, ValueError):
    """A task file that cannot be read: missing field, bad JSON, bad gold index."""


@dataclass(frozen=True)
class TaskSpec:
    """A task: where its rows come from and how a row becomes log-likelihood requests.

    ``fields`` maps the shape's canonical names to the file's (e.g. ``{"choices": "endings",
    "gold": "label"}``); ``template`` builds the context from the (canonical) row; ``delimiter`` goes
    between context and continuation, as lm-eval's ``target_delimiter``."""

    name: str
    shape: str
    local: str | None = None  # file name under LLMQ_DATA_DIR/tasks, or a path
    fields: dict[str, str] = field(default_factory=dict)
    template: str = "{query}"
    delimiter: str = " "
    hub: tuple[str, str | None, str] | None = None  # (dataset, config, split)
    hub_rows: Callable[[dict], dict] | None = None  # Hub row -> row in the local schema
    description: str = ""

    def __post_init__(self) -> None:
        if self.shape not in SHAPES:
            raise UnknownNameError("task shape", self.shape, SHAPES)


def _arc_hub(row: dict) -> dict:
    labels = list(row["choices"]["label"])
    return {"query": f"Question: {row['question']}", "choices": list(row["choices"]["text"]),
            "gold": labels.index(row["answerKey"])}


def _piqa_hub(row: dict) -> dict:
    return {"query": f"Question: {row['goal']}\n", "choices": [row["sol1"], row["sol2"]], "gold": int(row["label"])}


def _hellaswag_preprocess(text: str) -> str:
    """lm-eval's ``hellaswag/utils.py`` preprocessing."""
    text = text.strip().replace(" [title]", ". ")
    text = re.sub("\\[.*?\\]", "", text)
    return text.replace("  ", " ")


def _hellaswag_hub(row: dict) -> dict:
    ctx = row["ctx_a"] + " " + row["ctx_b"].capitalize()
    return {"query": _hellaswag_preprocess(row["activity_label"] + ": " + ctx),
            "endings": [_hellaswag_preprocess(e) for e in row["endings"]], "label": int(row["label"])}


def _lambada_hub(row: dict) -> dict:
    ctx, _, last = row["text"].rpartition(" ")
    return {"context": ctx, "continuation": last}


TASKS: Registry[TaskSpec] = Registry("task")
for _spec in (
    TaskSpec(
        "arc_easy", "multiple_choice", "arc_easy_test.jsonl", template="{query}\nAnswer:",
        hub=("allenai/ai2_arc", "ARC-Easy", "test"), hub_rows=_arc_hub,
        description="ARC-Easy test, 'Question: {q}\\nAnswer:' + ' {choice}' (lm-eval arc_easy)"),
    TaskSpec(
        "piqa", "multiple_choice", "piqa_valid.jsonl", template="{query}Answer:",
        hub=("baber/piqa", None, "validation"), hub_rows=_piqa_hub,
        description="PIQA validation, 'Question: {goal}\\nAnswer:' + ' {choice}' (lm-eval piqa)"),
    TaskSpec(
        "hellaswag", "multiple_choice", "hellaswag_val.jsonl", fields={"choices": "endings", "gold": "label"},
        hub=("Rowan/hellaswag", None, "validation"), hub_rows=_hellaswag_hub,
        description="HellaSwag validation, '{query}' + ' {ending}' (lm-eval hellaswag)"),
    TaskSpec(
        "lambada", "lm", "lambada_openai_test.jsonl", template="{context}",
        hub=("EleutherAI/lambada_openai", "default", "test"), hub_rows=_lambada_hub,
        description="LAMBADA (OpenAI) test, '{context}' + ' {last word}', greedy exact match (lm-eval lambada_openai)"),
):
    TASKS.register(_spec.name, _spec)


def task_names() -> list[str]:
    return sorted(TASKS)


def resolve_task(name: str | TaskSpec, fields: dict[str, str] | None = None) -> TaskSpec:
    """A registered name, ``name=path.jsonl`` (the registered task's prompt and field names, its rows
    read from that file), or a path to a JSON Lines file whose shape is detected from its first row.
    ``fields`` (canonical name -> the file's field) applies to the two file forms."""
    if isinstance(name, TaskSpec):
        return name
    name = name.strip()
    fields = fields or {}
    if "=" in name:
        base, path = name.split("=", 1)
        spec = resolve_task(base)
        return TaskSpec(**{**spec.__dict__, "local": path, "hub": None, "fields": {**spec.fields, **fields}})
    if name in TASKS:
        return TASKS.get(name)
    p = Path(name).expanduser()
    if p.suffix in (".jsonl", ".json") or "/" in name:
        if not p.is_file():
            raise LlmqError(f"Task file not found: {p}")
        shape = _detect_shape(p, fields)
        return TaskSpec(p.stem, shape, str(p), fields=dict(fields), template=_default_template(shape))
    raise UnknownNameError("task", name, [*TASKS, "lm_eval:<task>", "<file>.jsonl"])


def parse_task_fields(fields: str | dict[str, str] | None) -> dict[str, str]:
    """``"contexts=context_options,gold=label"`` (canonical name = the file's field) or a dict, checked
    against the canonical names of the three shapes."""
    if not fields:
        return {}
    if isinstance(fields, str):
        pairs = {}
        for item in (x.strip() for x in fields.split(",")):
            if not item:
                continue
            canon, sep, src = (x.strip() for x in item.partition("="))
            if not sep or not canon or not src:
                raise LlmqError(f"--task-fields {item!r}: expected CANONICAL=FIELD, e.g. contexts=context_options.")
            pairs[canon] = src
        fields = pairs
    canonical_names = sorted({f for fs in SHAPE_FIELDS.values() for f in fs})
    for canon in fields:
        if canon not in canonical_names:
            raise UnknownNameError("canonical task field (--task-fields)", canon, canonical_names)
    return dict(fields)


def resolve_tasks(names: list[Any], fields: str | dict[str, str] | None = None) -> list[TaskSpec]:
    """``resolve_task`` for each name; ``fields`` (``--task-fields``) renames the fields of the tasks
    read from a file (``FILE.jsonl`` and ``NAME=FILE.jsonl``), over a registered task's own mapping."""
    mapping = parse_task_fields(fields)
    specs = [resolve_task(n, fields=mapping) for n in names]
    if mapping and not any(s.local is not None and Path(s.local).expanduser().is_file() for s in specs):
        raise LlmqError("--task-fields renames the fields of a task file; name one in --tasks "
                        "(FILE.jsonl or NAME=FILE.jsonl).")
    return specs


def _default_template(shape: str) -> str:
    return "{query}" if shape == "multiple_choice" else "{context}"


def _open_text(path: Path) -> Any:
    """A task file opened for reading, after the text check every data file gets (a binary file is
    one line, not a UnicodeDecodeError); bytes that are not UTF-8 further on read as U+FFFD."""
    from llmq.safety import check_text_file

    check_text_file(path)
    return path.open(encoding="utf-8", errors="replace")


def _detect_shape(path: Path, fields: dict[str, str] | None = None) -> str:
    fields = fields or {}
    with _open_text(path) as f:
        for line in f:
            if line.strip():
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as e:
                    raise TaskDataError(f"{path} line 1: not valid JSON ({e.msg}).") from e
                if not isinstance(row, dict):
                    raise TaskDataError(f"{path} line 1: expected a JSON object.")
                for shape in ("schema", "multiple_choice", "lm"):
                    if all(fields.get(k, k) in row for k in SHAPE_FIELDS[shape]):
                        return shape
                raise TaskDataError(
                    f"{path}: cannot tell the task shape from the fields {sorted(row)}; expected "
                    + "; ".join(f"{s}: {', '.join(f)}" for s, f in SHAPE_FIELDS.items())
                    + " (map other names with --task-fields, e.g. contexts=context_options,gold=label).")
    raise TaskDataError(f"{path} is empty.")


def task_file(spec: TaskSpec) -> Path | None:
    """The local file for ``spec``: an explicit path, or ``LLMQ_DATA_DIR/tasks/<file>``."""
    if spec.local is None:
        return None
    p = Path(spec.local).expanduser()
    if p.is_absolute() or p.parent != Path("."):
        if not p.is_file():
            raise LlmqError(f"Task file not found: {p}")
        return p
    from llmq.data import local_file

    return local_file("tasks", spec.local)


def check_rows(spec: TaskSpec, limit: int | None = None) -> None:
    """Read and check every row of a task's local file (the rows ``limit`` keeps), before a model
    loads: a bad row is one line now, not after minutes of loading and scoring. Hub tasks are
    checked as they download."""
    path = task_file(spec)
    if path is not None:
        _read_jsonl(path, spec, limit)


def load_rows(spec: TaskSpec, limit: int | None = None) -> tuple[list[dict], str]:
    """Rows in the canonical schema of the task's shape, and where they came from."""
    path = task_file(spec)
    if path is not None:
        rows, total = _read_jsonl(path, spec, limit)
        source = f"{path.name}"
    else:
        rows, total, source = _hub_rows(spec, limit)
    if limit is not None and limit > total:
        warnings.warn(f"--limit {limit} is more than the {total} examples of {spec.name}; using all {total}.",
                      stacklevel=2)
    return rows, f"{source}, first {len(rows)} of {total}" if len(rows) < total else f"{source}, all {total}"


def _read_jsonl(path: Path, spec: TaskSpec, limit: int | None) -> tuple[list[dict], int]:
    rows, total = [], 0
    with _open_text(path) as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            total += 1
            if limit is not None and len(rows) >= limit:
                continue
            try:
                raw = json.loads(line)
            except json.JSONDecodeError as e:
                raise TaskDataError(f"{path} line {lineno}: not valid JSON ({e.msg}).") from e
            rows.append(canonical(raw, spec, f"{path} line {lineno}"))
    if not total:
        raise TaskDataError(f"{path} has no examples.")
    return rows, total


def canonical(raw: Any, spec: TaskSpec, where: str) -> dict:
    """``raw`` with the shape's canonical field names, checked."""
    if not isinstance(raw, dict):
        raise TaskDataError(f"{where}: expected a JSON object.")
    row = dict(raw)
    for canon in SHAPE_FIELDS[spec.shape]:
        src = spec.fields.get(canon, canon)
        if src not in raw:
            raise TaskDataError(f"{where}: missing field {src!r} (task {spec.name}, shape {spec.shape}).")
        row[canon] = raw[src]
    listf = {"multiple_choice": "choices", "schema": "contexts"}.get(spec.shape)
    if listf and (not isinstance(row[listf], list) or len(row[listf]) < 2):
        raise TaskDataError(f"{where}: field {spec.fields.get(listf, listf)!r} must be a list of at least 2 strings.")
    # what is scored must be text: an empty continuation or choice scores the delimiter alone
    # (a free "correct" answer), a number or null is not a prompt
    if "continuation" in SHAPE_FIELDS[spec.shape]:
        c = row["continuation"]
        if not isinstance(c, str) or not c.strip():
            raise TaskDataError(f"{where}: field {spec.fields.get('continuation', 'continuation')!r} = {c!r} must "
                                "be non-empty text.")
    if listf:
        for i, item in enumerate(row[listf]):
            if not isinstance(item, str) or (listf == "choices" and not item.strip()):
                raise TaskDataError(f"{where}: {spec.fields.get(listf, listf)!r}[{i}] = {item!r} must be "
                                    + ("non-empty text." if listf == "choices" else "text."))
    if "gold" in SHAPE_FIELDS[spec.shape]:
        g = row["gold"]
        if isinstance(g, str) and g.strip().isdigit():
            g = int(g)
        if not isinstance(g, int) or isinstance(g, bool) or not 0 <= g < len(row[listf]):
            raise TaskDataError(f"{where}: field {spec.fields.get('gold', 'gold')!r} = {row['gold']!r} is not an "
                                f"index into the {len(row[listf])} {listf}.")
        row["gold"] = g
    return row


def _hub_rows(spec: TaskSpec, limit: int | None) -> tuple[list[dict], int, str]:
    if spec.hub is None:
        raise LlmqError(f"Task {spec.name} has no local file and no Hub dataset.")
    from llmq.data import check_hub
    from llmq.hub import hub_error

    dataset, config, split = spec.hub
    check_hub(dataset)
    try:
        import datasets

        ds = datasets.load_dataset(dataset, config, split=split)
    except Exception as e:  # noqa: BLE001
        raise hub_error(e, f"task {spec.name} ({dataset})", data=True) from e
    total = len(ds)
    n = total if limit is None else min(limit, total)
    conv = spec.hub_rows or (lambda r: r)
    rows = [canonical(conv(ds[i]), spec, f"{dataset} row {i}") for i in range(n)]
    return rows, total, f"{dataset} {split} (Hub)"


def requests_for(spec: TaskSpec, row: dict) -> list[tuple[str, str]]:
    d = spec.delimiter
    if spec.shape == "multiple_choice":
        ctx = spec.template.format(**row)
        return [(ctx, d + c) for c in row["choices"]]
    if spec.shape == "lm":
        return [(spec.template.format(**row), d + row["continuation"])]
    return [(c, d + row["continuation"]) for c in row["contexts"]]


def run_task(model: Any, tokenizer: Any, spec: TaskSpec | str, *, limit: int | None = None, batch_size: int = 16,
             progress: bool = True, share_context: bool = True, per_example: bool = False) -> dict[str, Any]:
    """``{"acc", "acc_norm", "n", "protocol"}`` (plus ``"ppl"`` for the lm shape); accuracies as fractions.
    ``share_context=False`` scores every (context, choice) sequence whole, as lm-eval does (same numbers).
    ``per_example``: also ``"correct"``, one bool per example (paired comparisons of two models)."""
    import numpy as np

    from llmq.eval.loglik import loglikelihood

    spec = resolve_task(spec)
    rows, source = load_rows(spec, limit)
    reqs, owner = [], []
    for i, row in enumerate(rows):
        for r in requests_for(spec, row):
            reqs.append(r)
            owner.append(i)
    lls = loglikelihood(model, tokenizer, reqs, batch_size=batch_size, progress=progress, desc=spec.name,
                        share_context=share_context)
    per_row: list[list[Any]] = [[] for _ in rows]
    for i, ll in zip(owner, lls):
        per_row[i].append(ll)
    desc = spec.description or spec.name
    out: dict[str, Any] = {"acc": None, "acc_norm": None, "n": len(rows),
                           "protocol": f"{desc}; {source}; 0-shot, log-likelihood"}
    if spec.shape == "multiple_choice":
        acc, acc_norm = [], []
        for row, res in zip(rows, per_row):
            lp = np.array([r.logprob for r in res])
            lens = np.array([float(len(c)) for c in row["choices"]])
            acc.append(int(np.argmax(lp)) == row["gold"])
            acc_norm.append(int(np.argmax(lp / lens)) == row["gold"])
        out["acc"], out["acc_norm"] = float(np.mean(acc)), float(np.mean(acc_norm))
        correct = acc
    elif spec.shape == "lm":
        correct = [bool(res[0].greedy) for res in per_row]
        out["acc"] = float(np.mean(correct))
        out["ppl"] = float(np.exp(-np.mean([res[0].logprob for res in per_row])))
        out["protocol"] += "; acc = greedy exact match, ppl = exp(-mean example log-likelihood)"
    else:
        correct = [int(np.argmax([r.logprob for r in res])) == row["gold"] for row, res in zip(rows, per_row)]
        out["acc"] = float(np.mean(correct))
    if per_example:
        out["correct"] = [bool(c) for c in correct]
    return out
