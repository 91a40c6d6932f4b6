"""Calibration data for GPTQ and AWQ, validated before any weights load.

Windows of ``seqlen`` tokens are cut from the tokenized text without overlap and ``n_samples`` of
them are drawn with ``seed`` (the GPTQ paper's recipe, minus overlap so each token counts once).
The same source, tokenizer and seed give the same samples, and the fingerprint proves it.
"""

from __future__ import annotations

import hashlib
import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from llmq.data import check_hub, local_file
from llmq.hub import hub_error
from llmq.errors import CalibrationError, LlmqError

NAMED = ("wikitext2", "c4", "pileval", "builtin")
#: file types read as text (checked by ``llmq.safety.check_text_file``, as perplexity and task files are)
TEXT_SUFFIXES = (".txt", ".raw", ".tokens", ".md", ".jsonl", ".json")
MAX_CHARS = 40_000_000


@dataclass
class Calibration:
    samples: list[list[int]]
    fingerprint: dict[str, Any]

    def as_gptqmodel(self) -> list[dict[str, list[int]]]:
        return [{"input_ids": s, "attention_mask": [1] * len(s)} for s in self.samples]


def _read_file(path: Path, field: str = "text") -> list[str]:
    if not path.is_file():
        raise CalibrationError(f"Calibration file not found: {path}")
    suffix = path.suffix.lower()
    if suffix in TEXT_SUFFIXES:
        from llmq.safety import check_text_file

        check_text_file(path)
    if suffix in (".txt", ".raw", ".tokens", ".md"):
        return [path.read_text(encoding="utf-8", errors="replace")]
    if suffix in (".jsonl", ".json"):
        texts = []
        with open(path, encoding="utf-8", errors="replace") as f:
            for i, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as e:
                    raise CalibrationError(f"{path}:{i} is not valid JSON ({e.msg}).") from e
                if not isinstance(row, dict) or field not in row:
                    raise CalibrationError(f"{path}:{i} has no {field!r} field.")
                texts.append(str(row[field]))
        return texts
    if suffix == ".parquet":
        import pyarrow.parquet as pq

        table = pq.read_table(path)
        if field not in table.column_names:
            raise CalibrationError(f"{path} has no {field!r} column (columns: {', '.join(table.column_names)}).")
        return [str(t) for t in table.column(field).to_pylist()]
    raise CalibrationError(f"Unsupported calibration file type {suffix!r}: use .txt, .jsonl or .parquet.")


def _hub_texts(name: str) -> tuple[list[str], str]:
    import datasets

    check_hub(f"calibration dataset {name}")
    try:
        if name == "wikitext2":
            ds = datasets.load_dataset("wikitext", "wikitext-2-raw-v1", split="train")
            return ["\n\n".join(ds["text"])], "hub:wikitext/wikitext-2-raw-v1:train"
        if name == "c4":
            ds = datasets.load_dataset(
                "allenai/c4", data_files={"validation": "en/c4-validation.00000-of-00008.json.gz"}, split="validation"
            )
            return list(ds["text"][:20000]), "hub:allenai/c4:en/c4-validation.00000-of-00008"
        if name == "pileval":
            ds = datasets.load_dataset("mit-han-lab/pile-val-backup", split="validation")
            return list(ds["text"][:20000]), "hub:mit-han-lab/pile-val-backup:validation"
    except LlmqError:
        raise
    except Exception as e:  # noqa: BLE001
        raise hub_error(e, f"calibration dataset {name!r}", data=True) from e
    raise AssertionError(name)  # pragma: no cover


def load_texts(source: Any) -> tuple[list[str], str]:
    """``(texts, description)`` for a named dataset, a local file, or a list of strings."""
    if isinstance(source, (list, tuple)):
        if not all(isinstance(t, str) for t in source):
            raise CalibrationError("A calibration list must contain strings only.")
        return list(source), f"list:{len(source)} strings"
    if not isinstance(source, (str, Path)):
        raise CalibrationError(f"calibration must be a dataset name, a file path or a list of strings, got {type(source).__name__}.")
    text = str(source)
    if text == "builtin":
        import pydoc_data.topics

        return list(pydoc_data.topics.topics.values()), "builtin:pydoc_data.topics (Python language reference)"
    if text == "wikitext2":
        local = local_file("wikitext2", "wiki.valid.tokens")
        if local is not None:
            return [local.read_text(encoding="utf-8")], f"local:{local}"
    if text in NAMED:
        return _hub_texts(text)
    path = Path(text).expanduser()
    if path.suffix or path.exists() or "/" in text:
        return _read_file(path), f"file:{path}"
    from llmq.errors import UnknownNameError

    raise UnknownNameError("calibration dataset", text, NAMED)


def build(source: Any, tokenizer: Any, *, n_samples: int, seqlen: int, seed: int) -> Calibration:
    """Tokenize, cut and sample; fail with the numbers if there is not enough text."""
    texts, desc = load_texts(source)
    texts = [t for t in texts if t and t.strip()]
    if not texts:
        raise CalibrationError(f"Calibration data {desc} is empty.")
    joined = "\n\n".join(texts)[:MAX_CHARS]
    ids = tokenizer(joined, add_special_tokens=False)["input_ids"]
    need = n_samples * seqlen
    if len(ids) < need:
        raise CalibrationError(
            f"Calibration data {desc} has {len(ids)} tokens; n_samples={n_samples} x seqlen={seqlen} needs {need}. "
            "Give more text or lower n_samples/seqlen."
        )
    n_windows = len(ids) // seqlen
    picks = sorted(random.Random(seed).sample(range(n_windows), n_samples))
    samples = [ids[i * seqlen:(i + 1) * seqlen] for i in picks]
    h = hashlib.sha256()
    for s in samples:
        h.update(json.dumps(s).encode())
    fingerprint = {
        "source": desc,
        "n_samples": n_samples,
        "seqlen": seqlen,
        "seed": seed,
        "tokens_available": len(ids),
        "sha256": h.hexdigest(),
    }
    return Calibration(samples, fingerprint)


def validate_source(source: Any) -> None:
    """Cheap checks that need no tokenizer (named source known, file exists)."""
    if isinstance(source, (list, tuple)):
        if not source:
            raise CalibrationError("The calibration list is empty.")
        return
    if isinstance(source, (str, Path)):
        text = str(source)
        if text in NAMED:
            return
        path = Path(text).expanduser()
        if path.suffix or "/" in text:
            if not path.is_file():
                raise CalibrationError(f"Calibration file not found: {path}")
            if path.suffix.lower() in TEXT_SUFFIXES:
                from llmq.safety import check_text_file

                check_text_file(path)
            return
        from llmq.errors import UnknownNameError

        raise UnknownNameError("calibration dataset", text, NAMED)
    raise CalibrationError(f"calibration must be a dataset name, a file path or a list of strings, got {type(source).__name__}.")
