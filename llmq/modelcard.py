"""What an llmq model card says, read only from what was recorded: ``llmq.json`` (written by
``QuantizedModel.save``) and ``report.json`` (written by the evaluator); a section with no
measurement says so. Everything method-specific (packages, usage, hardware limits, tags) comes from
the scheme's plugin (``Backend.card_facts``). Rendering is ``llmq.cardrender``; upload ``llmq.publish``.
"""

from __future__ import annotations

import json
import os
import shlex
from pathlib import Path
from typing import Any

from llmq.errors import LlmqError, ModelNotFoundError
from llmq.fmt import fmt_int
from llmq.meta import META_FILE

CARD_FILE = "README.md"


REPORT_FILE = "report.json"

LLMQ_URL = "https://github.com/llmq-org/llmq"

#: lm-eval task -> (Hub dataset id, display name, config, split) for the card's model-index
TASK_DATASETS = {
    "arc_easy": ("allenai/ai2_arc", "ARC-Easy", "ARC-Easy", "test"),
    "arc_challenge": ("allenai/ai2_arc", "ARC-Challenge", "ARC-Challenge", "test"),
    "piqa": ("ybisk/piqa", "PIQA", None, "validation"),
    "hellaswag": ("Rowan/hellaswag", "HellaSwag", None, "validation"),
    "lambada_openai": ("EleutherAI/lambada_openai", "LAMBADA (OpenAI)", "default", "test"),
    "winogrande": ("allenai/winogrande", "WinoGrande", "winogrande_xl", "validation"),
}

PPL_DATASETS = {
    "wikitext2": ("Salesforce/wikitext", "WikiText-2", "wikitext-2-raw-v1", "test"),
    "c4": ("allenai/c4", "C4", "en", "validation"),
    "pileval": ("mit-han-lab/pile-val-backup", "Pile (validation)", None, "validation"),
}


# -- reading a folder ---------------------------------------------------------------------------
def read_folder(folder: str | os.PathLike) -> tuple[Path, dict, dict | None]:
    """``(path, llmq.json, report.json or None)``; one-line errors for anything that is not an llmq folder."""
    path = Path(folder).expanduser()
    if not path.is_dir():
        raise ModelNotFoundError(f"{path} is not a folder.")
    meta_file = path / META_FILE
    if not meta_file.is_file():
        raise LlmqError(f"{path} is not an llmq folder: it has no {META_FILE} (write one with `python -m llmq run`).")
    meta = _load_json(meta_file)
    missing = [k for k in ("scheme", "backend", "source", "size_bytes", "versions") if k not in meta]
    if missing:
        raise LlmqError(f"{meta_file} is missing {', '.join(missing)}; it was not written by llmq.")
    from llmq.backends.base import Backend
    from llmq.schemes import SCHEMES

    plugin = plugin_of(meta) if meta["scheme"] in SCHEMES else Backend  # the plugin says what a complete output is
    missing = plugin.missing_files(path)
    if missing:
        raise LlmqError(f"{path} has no {' and no '.join(missing)}; nothing to publish.")
    if (meta.get("verification") or {}).get("passed") is False:
        from llmq.verify import summary

        raise LlmqError(f"{path} failed its verification, so llmq does not publish it: {summary(meta['verification'])}.")
    report = _load_json(path / REPORT_FILE) if (path / REPORT_FILE).is_file() else None
    return path, meta, report

def _load_json(path: Path) -> dict:
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except json.JSONDecodeError as e:
        raise LlmqError(f"{path} is not valid JSON ({e.msg}, line {e.lineno}).") from e
    if not isinstance(data, dict):
        raise LlmqError(f"{path} does not hold a JSON object.")
    return data


# -- the pieces of the card ---------------------------------------------------------------------
def is_demo(meta: dict) -> bool:
    src = meta.get("source") or {}
    from llmq.hub import HUB_ID

    return src.get("kind") == "gguf" and bool(HUB_ID.match(str(src.get("name") or "")))

def hub_base_model(meta: dict) -> str | None:
    """The Hub id the card's ``base_model`` may name (the Hub rejects local paths there)."""
    from llmq.hub import HUB_ID

    base = (meta.get("source") or {}).get("base_model")
    if not base or Path(str(base)).expanduser().exists() or str(base).endswith(".gguf"):
        return None
    return str(base) if HUB_ID.match(str(base)) else None

def gguf_file(meta: dict) -> str | None:
    src = meta.get("source") or {}
    if src.get("kind") != "gguf":
        return None
    if is_demo(meta):
        from llmq.models import DEMO_GGUF

        return DEMO_GGUF
    return Path(str(src.get("name"))).name

def source_text(meta: dict) -> str:
    src = meta.get("source") or {}
    if is_demo(meta):
        from llmq.models import DEMO_PACKAGE

        text = f"`{gguf_file(meta)}` (llmq's offline demo model, from the PyPI package {DEMO_PACKAGE.replace('_', '-')})"
    elif src.get("kind") == "gguf":
        text = f"`{gguf_file(meta)}` (GGUF file)"
    else:
        text = f"`{src.get('name')}` ({'Hub' if src.get('kind') == 'hub' else 'local folder'})"
    return text + (f", revision `{src['revision']}`" if src.get("revision") else "")


def verification_text(meta: dict) -> str:
    """The card's "Verified" row: ``llmq.verify``'s result as recorded in ``llmq.json``."""
    v = meta.get("verification")
    if not v:
        return "not recorded (made by an llmq that did not verify its outputs)"
    if v.get("skipped"):
        return f"no: skipped ({v.get('reason') or 'not asked for'}); nothing checked this output against the original"
    return (f"{'passed' if v.get('passed') else 'FAILED'}: mean KL divergence {v['kld']:.3g} nats/token from the original "
            f"(bound {v['bound']:g}), top-1 agreement {100 * v['top1']:.1f}%, {fmt_int(v['tokens'])} tokens of "
            f"{str(v.get('text', '')).split(',')[0]}; output on {v.get('runtime')}, original on "
            f"{v.get('reference_runtime')}")


def plugin_of(meta: dict) -> Any:
    """The plugin class that owns the folder: the scheme's, or, for a folder it exported in another
    format (``config.format``, e.g. compressed-tensors), the plugin that loads that format."""
    from llmq.schemes import get_scheme, plugin_for_method

    cls = get_scheme(meta["scheme"]).backend_cls()
    fmt = (meta.get("config") or {}).get("format")
    return plugin_for_method(fmt) if fmt in cls.exports else cls


def card_facts(meta: dict, repo: str = "") -> Any:
    return plugin_of(meta).card_facts(meta, repo)


def tags_for(meta: dict) -> list[str]:
    tags = ["llmq", *card_facts(meta).tags]
    bits = meta.get("bits")
    if bits is not None:
        tags.append(f"{int(bits) if float(bits).is_integer() else bits}-bit")
    if (meta.get("bits") or 16) < 16:
        tags.append("quantized")
    return tags

def reproduce_command(meta: dict) -> tuple[str, str | None]:
    """The ``python -m llmq run`` command that re-creates this folder's config, and a caveat if any.

    Options equal to the scheme's defaults are left out, except calibration (always spelled out)."""
    from llmq.schemes import get_scheme

    sch = get_scheme(meta["scheme"])
    cfg = dict(meta.get("config") or {})
    fmt = cfg.pop("format", None)
    fmt = fmt if fmt != sch.config().to_dict().get("format") else None  # e.g. AWQ's "gemm" is its default
    defaults = sch.config(**({"format": fmt} if fmt else {})).to_dict()  # with the defaults that format sets
    src = meta.get("source") or {}
    args = ["python", "-m", "llmq", "run"]
    note = None
    if not is_demo(meta):
        args += ["--model", str(src.get("name"))]
        if src.get("kind") == "local":
            note = f"`{src.get('name')}` is a local folder on the machine that made this model; point --model at your copy."
    args += ["--scheme", meta["scheme"]]
    if src.get("revision"):
        args += ["--revision", str(src["revision"])]
    if fmt:
        args += ["--format", str(fmt)]
    calibrated = "calibration" in defaults
    for key, value in cfg.items():
        if key not in defaults:
            continue
        if key in ("calibration", "n_samples", "seqlen", "seed") and calibrated:
            if cfg.get("calibration") is None:  # optional calibration (GGUF's imatrix) not used
                continue
            if key == "calibration" and isinstance(value, str) and value.startswith("<") and value.endswith("strings>"):
                note = "It was calibrated on a list of strings passed from Python, which this command cannot repeat."
                continue
            args += [f"--{key.replace('_', '-')}", str(value)]
            continue
        if value == defaults[key]:
            continue
        if isinstance(value, str) and value.startswith("<") and value.endswith("strings>"):
            note = f"Its `{key}` was a list of strings passed from Python, which this command cannot repeat."
            continue
        if key == "bits":
            args += ["--bits", str(value)]
        elif key == "group_size":
            args += ["--group-size", str(value)]
        elif key == "sym":
            args.append("--sym" if value else "--asym")
        elif key == "skip_modules":
            args += ["--skip-modules", ",".join(value)]
        else:
            args += ["--set", f"{key}={json.dumps(value)}"]
    if meta.get("device"):
        args += ["--device", str(meta["device"])]
    return " ".join(shlex.quote(a) for a in args), note

def install_spec(meta: dict) -> str:
    """What reproducing the folder installs: the scheme's plugin's extra, and the exported
    format's (compressed-tensors) when it differs."""
    from llmq.schemes import get_scheme

    extras = list(dict.fromkeys(e for e in (get_scheme(meta["scheme"]).backend_cls().extra, plugin_of(meta).extra) if e))
    version = (meta.get("versions") or {}).get("llmq") or meta.get("llmq_version")
    name = f"llmq[{','.join(extras)}]" if extras else "llmq"
    return f"{name}=={version}" if version else name

def usage(meta: dict, repo: str) -> dict[str, str | None]:
    f = card_facts(meta, repo)
    return {"pip": f.packages, "python": f.python, "note": f.note, "vllm": f.serve, "vllm_note": f.serve_note,
            "title": f.usage_title, "serve_title": f.serve_title}

def limitations(meta: dict, report: dict | None) -> list[str]:
    items = []
    bits = meta.get("bits") or 16
    params = meta.get("parameters")
    if bits <= 4 and params:
        from llmq.advisor.rules import size_band

        band = size_band(params)
        lo, hi = band.four_bit_loss
        items.append(
            f"Model size: {fmt_int(params)} parameters, in the rule of thumb's {band.label} band, which says "
            f"\"{band.verdict}\": 4-bit weights typically cost {lo:g}-{hi:g}% quality at this size. "
            "That is llmq's prior, not a measurement of this model; see Evaluation."
            + (" Prefer an 8-bit scheme (int8-dynamic, bnb-int8, gptq-int8) unless size matters more." if band.prefer == "8" else "")
        )
        if bits < 4:
            items.append(f"{bits:g}-bit weights are below the rule of thumb's table: expect larger losses and measure.")
    hardware = card_facts(meta).hardware
    if hardware:
        items.append(hardware)
    if report is None:
        items.append("Quality after quantization was not measured for this upload.")
    else:
        ns = sorted({t.get("n") for t in ((report.get("quantized") or {}).get("tasks") or {}).values() if t.get("n")})
        if ns:
            n = ns[0]
            se = 100 * 0.5 / n ** 0.5  # binomial standard error at 50% accuracy: the widest it gets
            items.append(f"Task accuracies were measured on {', '.join(map(fmt_int, ns))} examples per task: one "
                         f"example is {100 / n:.2g} points, and the standard error of an accuracy can reach "
                         f"{se:.2g} points, so smaller differences can be sampling noise.")
    if gguf_file(meta):
        items.append("The starting weights were dequantized from a GGUF file, so they already carry that file's "
                     "quantization error" + ("; the evaluation compares against them, not against the base model's "
                                             "release." if report else "."))
    items.append("Quantization changes outputs in ways these metrics do not capture; the base model's own "
                 "limitations and terms of use apply.")
    return items

def protocol_items(report: dict) -> list[tuple[str, str]]:
    proto = report.get("protocol") or {}
    out = []
    if proto.get("ppl"):
        out.append(("perplexity", str(proto["ppl"])))
    for task, text in (proto.get("tasks") or {}).items():
        out.append((task, str(text)))
    for key, text in proto.items():
        if key not in ("ppl", "tasks") and isinstance(text, str):
            out.append((key, text))
    return out

def ppl_dataset(report: dict) -> str | None:
    """The perplexity dataset's llmq name, from the result or its protocol text."""
    for side in ("quantized", "original"):
        ppl = (report.get(side) or {}).get("perplexity") or {}
        if ppl.get("dataset"):
            return str(ppl["dataset"])
    texts = [str((report.get("protocol") or {}).get("ppl") or "")]
    texts += [str(((report.get(s) or {}).get("perplexity") or {}).get("protocol") or "") for s in ("quantized", "original")]
    for name in PPL_DATASETS:
        if any(name in t.lower() for t in texts):
            return name
    return None

def eval_rows(report: dict) -> list[tuple[str, str, str, str]]:
    """The card's evaluation table: ``llmq.eval.report.rows`` in its card style."""
    from llmq.eval.report import rows

    return rows(report, "card", dataset=ppl_dataset(report) or "dataset in protocol")


def gate_summary(report: dict) -> dict | None:
    gate = report.get("gate")
    if not gate:
        return None
    checks = []
    for c in gate.get("checks") or []:
        if isinstance(c, str):
            checks.append(c)
        elif isinstance(c, dict):
            text = c.get("message") or c.get("text") or ", ".join(f"{k}={v}" for k, v in c.items())
            checks.append(("passed: " if c.get("passed") else "FAILED: ") + str(text) if "passed" in c else str(text))
    return {"status": "passed" if gate.get("passed") else "FAILED", "verdict": gate.get("verdict") or "", "checks": checks}

def eval_results(meta: dict, report: dict | None) -> list[Any]:
    """The model-index: the quantized model's measured perplexity and task accuracies (exact values)."""
    if not report:
        return []
    from huggingface_hub import EvalResult

    q = report.get("quantized") or {}
    out = []
    ppl = q.get("perplexity") or {}
    if ppl.get("value") is not None:
        name = ppl_dataset(report)
        dtype, dname, dconf, split = PPL_DATASETS.get(name or "", (name or "unknown", name or "unknown", None, None))
        out.append(EvalResult(
            task_type="text-generation", dataset_type=dtype, dataset_name=dname, dataset_config=dconf,
            dataset_split=split, metric_type="perplexity", metric_value=ppl["value"],
            metric_name=f"perplexity ({fmt_int(ppl.get('tokens'))} tokens)" if ppl.get("tokens") else "perplexity",
            source_name="llmq", source_url=LLMQ_URL,
        ))
    for task, res in (q.get("tasks") or {}).items():
        dtype, dname, dconf, split = TASK_DATASETS.get(task, (task, task, None, None))
        n = f" (n={res['n']})" if res.get("n") else ""
        for metric in ("acc", "acc_norm"):
            if res.get(metric) is None:
                continue
            out.append(EvalResult(
                task_type="text-generation", dataset_type=dtype, dataset_name=dname, dataset_config=dconf,
                dataset_split=split, metric_type=metric, metric_value=res[metric], metric_name=f"{metric}{n}",
                source_name="llmq", source_url=LLMQ_URL,
            ))
    return out

def base_license(base_model: str | None, token: str | None = None) -> tuple[dict[str, str] | None, str]:
    """The base model's ``license`` (and ``license_name``/``license_link`` for "other") from its card on
    the Hub. Offline, or for a local base model, ``(None, reason)``."""
    if not base_model:
        return None, "local"
    from llmq.models import check_hub_reachable

    try:
        check_hub_reachable(base_model)
        from huggingface_hub import ModelCard

        card = ModelCard.load(base_model, token=token)
    except Exception:  # noqa: BLE001 - offline, gated, no README: all mean "unknown"
        return None, "unreachable"
    data = card.data.to_dict()
    if not data.get("license"):
        return None, "unstated"
    return {k: data[k] for k in ("license", "license_name", "license_link") if data.get(k)}, "hub"

def license_text(lic: dict | None, reason: str, base: str | None) -> str:
    where = f"[{base}](https://huggingface.co/{base})" if base else "the base model"
    if lic and reason == "hub":
        return (f"`{lic['license']}`, inherited from {where} (read from its model card). The base model's terms "
                "apply to this quantized version.")
    if lic:
        return f"`{lic['license']}`, as set by the uploader. The base model's terms apply to this quantized version."
    why = {
        "unreachable": "the Hugging Face Hub could not be reached when this card was written",
        "unstated": "its model card states none",
        "local": "it is a local folder, not a Hub model",
    }.get(reason, reason)
    return (f"Unknown: llmq could not read the license of {where} ({why}), so the metadata sets none. "
            f"This quantized model is bound by the base model's license; check it before use.")

def original_label(path: str | None, gguf: str | None) -> str:
    """How the card names the evaluation's original: a Hub id as is, never a local path (it means
    nothing on the Hub and can leak a user's file layout)."""
    if not path:
        return "the original weights"
    from llmq.models import cache_dir

    p = Path(path)
    if gguf and cache_dir().resolve() in p.resolve().parents:
        return f"the original weights (dequantized from `{gguf}`)"
    if p.suffix == ".gguf":
        return f"the original GGUF file `{p.name}`"
    if p.is_absolute() or p.exists() or path.startswith((".", "~")):
        return f"the original weights (a local folder, `{p.name}`)"
    return f"the original weights (`{path}`)"
