"""``--tasks lm_eval:<name>``: run lm-evaluation-harness's own task on the model object llmq already
loaded (``HFLM(pretrained=model, tokenizer=tok)``), so users get the field's standard numbers from
the same command. Needs ``pip install 'llmq[lm-eval]'``."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any, Iterator

from llmq.errors import LlmqError, MissingDependencyError

PREFIX = "lm_eval:"


def available() -> bool:
    import importlib.util

    return importlib.util.find_spec("lm_eval") is not None


def local_task(yaml_path: str | Path, data_file: str | Path) -> dict:
    """An lm-eval task config (dict) from one of ``eval/lm_eval_tasks/*.yaml`` with its
    ``{data_file}`` placeholder filled in: the harness's task over a local JSON Lines file."""
    import yaml

    text = Path(yaml_path).read_text(encoding="utf-8").replace("{data_file}", str(Path(data_file).resolve()))
    return yaml.safe_load(text)


def run(model: Any, tokenizer: Any, tasks: list[str | dict], *, limit: int | None = None, batch_size: int = 16,
        progress: bool = True) -> dict[str, dict]:
    """``{task: {"acc", "acc_norm", "n", "protocol"}}`` from lm-eval's ``simple_evaluate``."""
    if not available():
        raise MissingDependencyError("--tasks lm_eval:<task>", ["lm-eval"], "lm-eval")
    import logging

    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    names = [t.removeprefix(PREFIX) if isinstance(t, str) else t for t in tasks]
    logging.getLogger("lm_eval").setLevel(logging.WARNING)
    by_name = [n for n in names if isinstance(n, str)]
    # Indexing the harness's thousands of task YAMLs takes seconds to minutes; configs given as dicts need none of it.
    tm = TaskManager(include_defaults=bool(by_name))
    known = set(tm.all_tasks)
    for n in by_name:
        if n not in known:
            from llmq.errors import UnknownNameError

            raise UnknownNameError("lm-eval task", n, _closest(n, known))
    lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size)
    try:
        with _offline_if_local(names):
            res = simple_evaluate(model=lm, tasks=names, limit=limit, task_manager=tm, log_samples=False,
                                  verbosity="WARNING", bootstrap_iters=0)
    except LlmqError:
        raise
    except Exception as e:  # noqa: BLE001 - the harness failing (e.g. offline Hub) is one line for the user
        from llmq.hub import hub_error

        raise hub_error(e, f"lm-eval tasks {', '.join(map(str, names))}", data=True) from e
    out = {}
    for name, metrics in res["results"].items():
        if name not in {n if isinstance(n, str) else n.get("task") for n in names}:
            continue
        n = (res.get("n-samples") or {}).get(name, {}).get("effective")
        out[f"{PREFIX}{name}"] = {
            "acc": metrics.get("acc,none"),
            "acc_norm": metrics.get("acc_norm,none"),
            "n": n,
            "protocol": f"lm-evaluation-harness {_version()} task {name}, 0-shot"
                        + (f", limit {limit}" if limit else ""),
        }
    return out


@contextlib.contextmanager
def _offline_if_local(names: list) -> Iterator[None]:
    """Local-file tasks need no Hub; without this, ``datasets`` waits on network timeouts when the
    Hub is unreachable (measured: ~100 s for one local JSON task on an offline machine)."""
    local = all(isinstance(n, dict) and n.get("dataset_path") in ("json", "csv", "text") for n in names)
    if not local:
        yield
        return
    import datasets.config

    old = datasets.config.HF_HUB_OFFLINE
    datasets.config.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        datasets.config.HF_HUB_OFFLINE = old


def _closest(name: str, known: set[str]) -> list[str]:
    """The valid-name list for the error: lm-eval has thousands of tasks; show the nearest few."""
    import difflib

    return difflib.get_close_matches(name, sorted(known), n=8, cutoff=0.4) or ["(see `lm_eval --tasks list`)"]


def _version() -> str:
    from importlib.metadata import version

    try:
        return version("lm_eval")
    except Exception:  # noqa: BLE001
        return ""
