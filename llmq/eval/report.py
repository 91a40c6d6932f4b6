"""``report.json``, ``report.md`` (original, quantized, change) and ``report.png`` (quality vs size)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable

from llmq.fmt import fmt_bytes, fmt_change_pts, fmt_change_rel, fmt_float, fmt_kld, fmt_pct, mb
from llmq.io import atomic_file, write_json, write_text

FILES = ("report.json", "report.md", "report.png")


def _num(nd: int) -> Callable[[Any], str]:
    return lambda x: "n/a" if x is None else f"{x:,.{nd}f}"


def _pts(x: Any) -> str:
    return "n/a" if x is None else f"{x * 100:.2f}"


def _ratio(a: Any, b: Any) -> str:
    return "" if a in (None, 0) or b is None else f"{b / a:.2f}x"


def _rel(a: Any, b: Any) -> str:
    return "" if a in (None, 0) or b is None else f"{(b / a - 1) * 100:+.2f}%"


def _dpts(a: Any, b: Any) -> str:
    return "" if a is None or b is None else f"{(b - a) * 100:+.2f} pts"


#: (value, change) formatters per kind of number, for report.md ("report") and the model card ("card")
FORMATS: dict[str, dict[str, tuple[Callable[[Any], str], Callable[[Any, Any], str]]]] = {
    "report": {"bytes": (mb, _ratio), "seconds": (_num(2), _ratio), "speed": (_num(1), _ratio),
               "ppl": (_num(3), _rel), "acc": (_pts, _dpts)},
    "card": {"bytes": (fmt_bytes, fmt_change_rel), "seconds": (lambda x: fmt_float(x, 2), fmt_change_rel),
             "speed": (lambda x: fmt_float(x, 1), fmt_change_rel), "ppl": (fmt_float, fmt_change_rel),
             "acc": (fmt_pct, fmt_change_pts)},
}
#: metric -> (report.md label, card label, getter, kind)
METRICS: dict[str, tuple[str, str, Callable[[dict], Any], str]] = {
    "size": ("size on disk", "Size on disk (bytes)", lambda d: d.get("size_bytes"), "bytes"),
    "param": ("parameter memory", "Parameter memory (bytes)", lambda d: d.get("param_memory_bytes"), "bytes"),
    "rss": ("peak RSS while evaluating", "Peak RSS (bytes)", lambda d: d.get("peak_rss_bytes"), "bytes"),
    "load": ("load time (s)", "Load time (s)", lambda d: d.get("load_time_s"), "seconds"),
    "ppl": ("perplexity (lower is better)", "Perplexity ({dataset}), lower is better",
            lambda d: (d.get("perplexity") or {}).get("value"), "ppl"),
    "prefill": ("prefill (tokens/s)", "Prefill (tokens/s)", lambda d: d.get("prefill_tokens_per_s"), "speed"),
    "decode": ("decode (tokens/s)", "Decode (tokens/s)", lambda d: d.get("decode_tokens_per_s"), "speed"),
}
ORDER = {"report": ("size", "param", "rss", "load", "ppl", "tasks", "kld", "prefill", "decode"),
         "card": ("ppl", "tasks", "kld", "size", "param", "rss", "load", "prefill", "decode")}


def rows(report: dict, style: str = "report", *, dataset: str | None = None) -> list[tuple[str, str, str, str]]:
    """(metric, original, quantized, change) for ``report.md`` and the console (``style="report"``:
    measured metrics only; a side without an original, from ``evaluate`` with no reference, has an
    empty original column) or for the model card (``style="card"``: every metric, "not measured"
    where it was not, exact bytes; ``dataset`` names the perplexity text)."""
    card = style == "card"
    fmts = FORMATS[style]
    o = report.get("original") or {}
    q = report.get("quantized") or report.get("model") or {}
    out: list[tuple[str, str, str, str]] = []

    def add(label: str, get: Callable[[dict], Any], kind: str, keep_missing: bool = card) -> None:
        a, b = get(o), get(q)
        if a is None and b is None and not keep_missing:
            return
        fmt, change = fmts[kind]
        out.append((label, fmt(a) if o or card else "", fmt(b), change(a, b) if o or card else ""))

    for key in ORDER[style]:
        if key == "tasks":
            for task in dict.fromkeys([*(o.get("tasks") or {}), *(q.get("tasks") or {})]):
                get = lambda d, m, t=task: ((d.get("tasks") or {}).get(t) or {}).get(m)  # noqa: E731
                add(f"{task} acc" + ("" if card else " (%)"), lambda d, g=get: g(d, "acc"), "acc")
                add(f"{task} acc_norm" + ("" if card else " (%)"), lambda d, g=get: g(d, "acc_norm"), "acc",
                    keep_missing=False)
                if not card:
                    add(f"{task} perplexity", lambda d, g=get: g(d, "ppl"), "ppl")
        elif key == "kld":
            k = q.get("kld") or {}
            if card:
                out += [("KL divergence to original, mean", "(reference)", fmt_kld(k.get("mean")), ""),
                        ("KL divergence to original, p99", "(reference)", fmt_kld(k.get("p99")), ""),
                        ("Same top-1 token as original", "(reference)", fmt_pct(k.get("same_top")), "")]
            elif k:
                out += [("KL divergence, mean (nats)", "(reference)", f"{k['mean']:.5f}", ""),
                        ("KL divergence, p99 (nats)", "(reference)", f"{k['p99']:.5f}", ""),
                        ("same top-1 token (%)", "(reference)", f"{k['same_top'] * 100:.2f}", "")]
        else:
            report_label, card_label, get, kind = METRICS[key]
            add(card_label.format(dataset=dataset) if card else report_label, get, kind)
    return out


def markdown(report: dict) -> str:
    has_ref = bool(report.get("original"))
    head = ["metric", "original", "quantized", "change"] if has_ref else ["metric", "value"]
    lines = ["# llmq evaluation", ""]
    if has_ref:
        lines += [f"- original: `{report['original'].get('path')}`", f"- quantized: `{report['quantized'].get('path')}`", ""]
    else:
        lines += [f"- model: `{(report.get('model') or {}).get('path')}`", ""]
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for label, a, b, ch in rows(report):
        cells = [label, a, b, ch] if has_ref else [label, b]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "Accuracies in percent; change = quantized / original for sizes and speeds, relative change "
              "for perplexity, difference in points for accuracies.", "", "## Protocol", ""]
    proto = report.get("protocol") or {}
    if proto.get("ppl"):
        lines.append(f"- perplexity: {proto['ppl']}")
    for t, p in (proto.get("tasks") or {}).items():
        lines.append(f"- {t}: {p}")
    for key in ("runtime", "kld", "speed"):
        if proto.get(key):
            lines.append(f"- {key}: {proto[key]}")
    gate = report.get("gate")
    if gate:
        lines += ["", "## Gate", "", f"**{gate['verdict']}**", ""]
        for c in gate.get("checks") or []:
            lines.append(f"- {'pass' if c['passed'] else 'FAIL'}: {c['message']}")
    return "\n".join(lines) + "\n"


def plot(report: dict, path: str | os.PathLike) -> None:
    """Quality vs size: one panel per quality metric (perplexity, each task's accuracy)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sides = [(n, report.get(k) or {}) for n, k in (("original", "original"), ("quantized", "quantized"),
                                                   ("model", "model")) if report.get(k)]
    metrics: list[tuple[str, Callable[[dict], Any]]] = []
    if any((d.get("perplexity") or {}).get("value") is not None for _, d in sides):
        metrics.append(("perplexity (lower is better)", lambda d: (d.get("perplexity") or {}).get("value")))
    tasks = dict.fromkeys(t for _, d in sides for t in (d.get("tasks") or {}))
    for t in tasks:
        metrics.append((f"{t} accuracy (%)", lambda d, t=t: None if ((d.get("tasks") or {}).get(t) or {}).get("acc")
                        is None else d["tasks"][t]["acc"] * 100))
    metrics = metrics[:6] or [("(no quality metric measured)", lambda d: None)]
    fig, axes = plt.subplots(1, len(metrics), figsize=(4.2 * len(metrics), 3.6), squeeze=False)
    for ax, (label, get) in zip(axes[0], metrics):
        for (name, d), color in zip(sides, ("tab:blue", "tab:orange", "tab:green")):
            size, y = d.get("size_bytes") or d.get("param_memory_bytes"), get(d)
            if size is None or y is None:
                continue
            ax.scatter([size / 1e6], [y], color=color, s=60, label=name, zorder=3)
            ax.annotate(name, (size / 1e6, y), textcoords="offset points", xytext=(6, 4), fontsize=8)
        ax.set_xlabel("size on disk (MB)")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    fig.suptitle("llmq: quality vs size")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_report(report: dict, out_dir: str | os.PathLike) -> Path:
    """Write the three files; each appears complete or not at all (temp file + rename)."""
    out = Path(out_dir).expanduser()
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "report.json", report)
    write_text(out / "report.md", markdown(report))
    with atomic_file(out / "report.png") as tmp:
        plot(report, tmp)
    return out
