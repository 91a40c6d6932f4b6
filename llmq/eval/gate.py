"""The accuracy gate: turn a compare report into pass/fail with one line naming the metric that failed.

A metric the gate asks about but the report did not measure fails the gate (never a silent pass)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from llmq.config import parse_increase
from llmq.errors import ConfigError


@dataclass
class GateResult:
    passed: bool
    verdict: str
    checks: list[dict] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def gate_set(max_ppl_increase: Any = None, max_accuracy_loss: Any = None, max_kld: Any = None) -> bool:
    return max_ppl_increase not in (None, "") or max_accuracy_loss is not None or max_kld is not None


def validate(max_ppl_increase: Any = None, max_accuracy_loss: Any = None, max_kld: Any = None) -> None:
    """Check the thresholds before any model loads."""
    parse_increase(max_ppl_increase)
    for name, v in (("--max-accuracy-loss", max_accuracy_loss), ("--max-kld", max_kld)):
        if v is not None and (not isinstance(v, (int, float)) or v < 0):
            raise ConfigError(f"{name} must be a non-negative number, got {v!r}.")


def check_gate(report: dict, *, max_ppl_increase: Any = None, max_accuracy_loss: float | None = None,
               max_kld: float | None = None) -> GateResult:
    """Judge ``report`` (the ``report.json`` dict). ``max_ppl_increase`` is relative (``"5%"``,
    ``0.05``); ``max_accuracy_loss`` in accuracy points (1.0 = one point) per task; ``max_kld`` on
    the mean KL divergence in nats."""
    validate(max_ppl_increase, max_accuracy_loss, max_kld)
    limit_ppl = parse_increase(max_ppl_increase)
    o, q = report.get("original") or {}, report.get("quantized") or {}
    checks: list[dict] = []
    if limit_ppl is not None:
        po, pq = (o.get("perplexity") or {}).get("value"), (q.get("perplexity") or {}).get("value")
        if po is None or pq is None:
            checks.append(_check("ppl_increase", "perplexity", None, limit_ppl, False,
                                 "perplexity was not measured (pass --ppl)"))
        else:
            inc = pq / po - 1
            checks.append(_check("ppl_increase", "perplexity", inc, limit_ppl, inc <= limit_ppl,
                                 f"perplexity {inc * 100:+.2f}% ({po:.3f} -> {pq:.3f}), limit +{limit_ppl * 100:g}%"))
    if max_accuracy_loss is not None:
        to, tq = o.get("tasks") or {}, q.get("tasks") or {}
        names = [n for n in to if n in tq and to[n].get("acc") is not None and tq[n].get("acc") is not None]
        if not names:
            checks.append(_check("accuracy_loss", "task accuracy", None, max_accuracy_loss, False,
                                 "no task accuracy was measured (pass --tasks)"))
        for n in names:
            loss = (to[n]["acc"] - tq[n]["acc"]) * 100
            checks.append(_check(f"accuracy_loss:{n}", f"{n} accuracy", loss, max_accuracy_loss,
                                 loss <= max_accuracy_loss + 1e-9,
                                 f"{n} accuracy {0.0 - loss + 0.0:+.2f} points ({to[n]['acc'] * 100:.2f} -> "
                                 f"{tq[n]['acc'] * 100:.2f}), limit -{max_accuracy_loss:g}"))
    if max_kld is not None:
        kld = (q.get("kld") or {}).get("mean")
        if kld is None:
            checks.append(_check("kld_mean", "KL divergence", None, max_kld, False,
                                 "KL divergence was not measured (needs --ppl and the original)"))
        else:
            checks.append(_check("kld_mean", "KL divergence", kld, max_kld, kld <= max_kld,
                                 f"mean KL divergence {kld:.4g}, limit {max_kld:g}"))
    failed = [c for c in checks if not c["passed"]]
    if failed:
        extra = f" (and {len(failed) - 1} more)" if len(failed) > 1 else ""
        return GateResult(False, f"FAIL: {failed[0]['message']}{extra}", checks)
    if not checks:
        return GateResult(True, "PASS (no gate set)", checks)
    return GateResult(True, "PASS: " + "; ".join(c["message"] for c in checks), checks)


def _check(name: str, metric: str, value: float | None, limit: float, passed: bool, message: str) -> dict:
    return {"name": name, "metric": metric, "value": value, "limit": limit, "passed": bool(passed), "message": message}
