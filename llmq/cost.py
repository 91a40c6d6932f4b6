"""What quantizing a model will cost on this machine, said before any weight loads: peak RAM and wall
time. Each scheme's plugin declares its cost features (``Backend.cost_features``: the bytes it
holds at its peak by its own formula, and the work its time grows with); the peak and the wall time
are linear in them, with coefficients fitted by ``scripts/bench_scale.py`` to measurements at
several model sizes (``eval/bench_scale.json``: fitted on all but the largest size and checked on
it), then refitted on every size and shipped in ``llmq/scale_costs.json``. Wall times were measured
on one shared 2-core VM (its CPU and load are recorded); they scale with the core count only roughly,
so they are quoted as "about".
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

from llmq.streaming import SHARD_BYTES  # the largest shard the writer holds before writing it

COSTS_FILE = Path(__file__).with_name("scale_costs.json")
GIB = 1024**3
#: the sizes the cost model is fitted on, smallest first (the demo and ``llmq.testing.SCALE_SHAPES``)
SIZES = ("demo", "1B", "3B", "7B")


@dataclass
class CostFeatures:
    """A plugin's cost formula evaluated for one model and config."""

    ram_bytes: float  # what the plugin holds at its peak, by its own formula
    work: float  # what the wall time grows with: parameters, times calibration tokens when it calibrates
    streams: bool = True  # memory bounded by a layer (False: the whole model is in memory)
    #: its time is mostly bf16/fp16 matmuls on CPU (GPTQ's calibration forwards): several times
    #: slower on a CPU without native bf16 than on the reference CPU (scripts/bench_cpu_dtypes.py)
    half_matmuls: bool = False

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Projection:
    scheme: str
    ram_gib: float
    wall_s: float
    basis: str  # where the coefficients come from

    def describe(self) -> str:
        return f"{self.scheme}: about {self.ram_gib:.1f} GiB RAM at peak, about {human_time(self.wall_s)}"


def human_time(s: float) -> str:
    if s < 90:
        return f"{s:.0f} s"
    if s < 5400:
        return f"{s / 60:.0f} min"
    return f"{s / 3600:.1f} h"


# -- the features plugins compute ----------------------------------------------------------------
def layer_params(profile: Any) -> int:
    """Parameters of one decoder layer (its Linears and two norms)."""
    lin = sum(l.numel for l in profile.linears if l.in_layers)
    return lin // max(profile.layers, 1) + 2 * profile.hidden


def largest_block(profile: Any) -> int:
    """Parameters of the largest block streamed at once: a decoder layer, or the embeddings with an
    untied lm_head (``llmq.streaming.BlockModel.blocks``)."""
    return max(layer_params(profile), profile.embedding_params + profile.lm_head_params)


def layer_activation_widths(profile: Any) -> tuple[int, int]:
    """``(inputs, outputs)``: summed widths of one decoder layer's distinct Linear inputs (shared
    ones once) and of its Linear outputs."""
    ins: dict[tuple[str, int], int] = {}
    outs = 0
    for l in profile.linears:
        if l.in_layers and ".layers.0." in f".{l.name}":
            kind = "attn_in" if l.name.endswith(("q_proj", "k_proj", "v_proj")) else \
                "mlp_in" if l.name.endswith(("gate_proj", "up_proj")) else l.name
            ins[(kind, l.in_features)] = l.in_features
            outs += l.out_features
    return sum(ins.values()), outs


def streamed(profile: Any, compute_bytes: float, output_bytes: float, extra: float = 0.0, work: float | None = None,
             converted_bytes: float | None = None) -> CostFeatures:
    """A plugin that converts block by block: the largest block at the compute dtype and its
    converted copy (``converted_bytes`` per parameter, default the compute dtype's), the shard being
    filled (at most ``SHARD_BYTES``), plus ``extra``."""
    conv = compute_bytes if converted_bytes is None else converted_bytes
    ram = largest_block(profile) * (compute_bytes + conv) + min(SHARD_BYTES, output_bytes) + extra
    return CostFeatures(float(ram), float(profile.parameters if work is None else work))


def calibration_bytes(profile: Any, tokens: int) -> float:
    """Hidden states of every calibration token, in and out of the current layer, in fp32."""
    return 2.0 * tokens * profile.hidden * 4


# -- coefficients ----------------------------------------------------------------------------------
def load_coefficients(path: Path = COSTS_FILE) -> dict[str, Any]:
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


def project(scheme: str, features: CostFeatures, coefficients: dict[str, Any] | None = None) -> Projection | None:
    """The projected peak RAM and wall time, or None when no measurement covers ``scheme``."""
    data = load_coefficients() if coefficients is None else coefficients
    c = (data.get("schemes") or {}).get(scheme)
    if not c:
        return None
    ram = c["ram"][0] + c["ram"][1] * features.ram_bytes / GIB
    wall = c["wall"][0] + c["wall"][1] * features.work
    basis = data.get("basis", str(COSTS_FILE.name))
    if c.get("one_size"):
        basis += f"; {scheme} scaled from its {c['sizes'][0]} run alone, roughly"
    if c.get("projected"):
        basis += f"; {scheme}'s time at {', '.join(c['projected'])} projected from the layers run"
    return Projection(scheme, max(ram, 0.1), max(wall, 1.0), basis)


def _linfit(xs: list[float], ys: list[float]) -> tuple[float, float]:
    """Least squares ``y = a + b x`` (``b`` only through the origin's mean when one point)."""
    n = len(xs)
    mx, my = sum(xs) / n, sum(ys) / n
    sxx = sum((x - mx) ** 2 for x in xs)
    if n < 2 or sxx == 0:
        return 0.0, my / mx if mx else 0.0
    b = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sxx
    return my - b * mx, b


def measured_wall(row: dict) -> float | None:
    """A row's wall time: measured when the run completed, projected from its layers when
    ``--timeout`` stopped it (``layers.projected_total_s``), else None (failed: not a measurement)."""
    if row.get("exit") == 0:
        return row["wall_s"]
    if row.get("exit") == "timeout" and row.get("peak_anon_gib"):
        return (row.get("layers") or {}).get("projected_total_s") or None
    return None


def reference_cpu(rows: list[dict]) -> str | None:
    """The CPU that measured the most rows: wall times are fitted on its rows alone (a CPU without
    native bf16 ran GPTQ's calibration several times slower; ``scripts/bench_scale.py``)."""
    counts: dict[str | None, int] = {}
    for r in rows:
        counts[r.get("cpu")] = counts.get(r.get("cpu"), 0) + 1
    return max(counts, key=counts.get) if counts else None


def fit_rows(rows: list[dict], features_of: Callable[[str, str], dict], order: tuple[str, ...] = SIZES
             ) -> dict[str, Any]:
    """Per scheme with >= 3 measured sizes: ``ram`` (peak anonymous RSS, GiB) and ``wall`` (s)
    fitted on all but the largest size, and the relative error of the projection there. A size
    measured by a run stopped with ``--timeout`` (AWQ: hours per 7B run here) counts with the total
    its layers projected and the peak of the layers it ran; such sizes are listed in ``projected``.
    Rows say which CPU measured them (``cpu``): times come from the reference CPU's rows (a completed
    run beats a projection), peaks from a size's newest row on any CPU (a peak does not depend on how
    fast the CPU is, and the newest run measured the code as it is: GPTQ's peak fell when llmq fixed
    glibc's mmap threshold)."""
    out: dict[str, Any] = {}
    by: dict[str, dict[str, dict]] = {}
    # whole-model jobs (checks of a formula) and runs under changed memory settings are not fitted
    rows = [r for r in rows if not r.get("formula_gib") and not r.get("env")]
    ref = reference_cpu(rows)
    for r in rows:
        total = measured_wall(r)
        if total is None or r["size"] not in order:  # e.g. 7B-2L: the end of a run, not a size
            continue
        held = by.setdefault(r["scheme"], {}).setdefault(r["size"], {})
        if r.get("cpu") == ref and ((w := held.get("wall")) is None or (w.get("exit") != 0 and r.get("exit") == 0)):
            held["wall"] = {**r, "wall_s": total}
        if (m := held.get("ram")) is None or (r.get("when") or "") > (m.get("when") or ""):
            held["ram"] = r
    for scheme, sized in by.items():
        rs = sorted((s for s in sized.values() if len(s) == 2), key=lambda s: order.index(s["ram"]["size"]))
        if len(rs) < 3:
            continue
        feats = [features_of(scheme, s["ram"]["size"]) for s in rs]
        peaks, walls = [s["ram"]["peak_anon_gib"] for s in rs], [s["wall"]["wall_s"] for s in rs]
        ff, fc = feats[:-1], feats[-1]
        ram = _linfit([f["ram_bytes"] / GIB for f in ff], peaks[:-1])
        wall = _linfit([f["work"] for f in ff], walls[:-1])
        p_ram = ram[0] + ram[1] * fc["ram_bytes"] / GIB
        p_wall = wall[0] + wall[1] * fc["work"]
        ram_all = _linfit([f["ram_bytes"] / GIB for f in feats], peaks)
        wall_all = _linfit([f["work"] for f in feats], walls)
        sizes = [s["ram"]["size"] for s in rs]
        projected = [s["wall"]["size"] for s in rs if s["wall"].get("exit") != 0]
        other = {s["ram"]["size"]: s["ram"]["cpu"] for s in rs if s["ram"].get("cpu") != ref}
        out[scheme] = {
            "ram": [round(ram[0], 4), ram[1]], "wall": [round(wall[0], 2), wall[1]],
            "ram_all": [round(ram_all[0], 4), ram_all[1]], "wall_all": [round(wall_all[0], 2), wall_all[1]],
            "fitted_on": sizes[:-1], "checked_on": sizes[-1],
            **({"projected": projected} if projected else {}),
            **({"peaks_on_other_cpu": other} if other else {}),
            "check": {"ram_gib": [round(p_ram, 2), peaks[-1]],
                      "wall_s": [round(p_wall, 1), walls[-1]],
                      "ram_error": round(p_ram / peaks[-1] - 1, 3),
                      "wall_error": round(p_wall / walls[-1] - 1, 3)},
        }
    out.update(fit_one_size(rows, features_of, order, skip=set(out)))
    return out


def fit_one_size(rows: list[dict], features_of: Callable[[str, str], dict],
                 order: tuple[str, ...] = SIZES, skip: set[str] = frozenset()) -> dict[str, Any]:
    """Schemes measured at fewer than three sizes (GPTQ, AWQ, GGUF K-quants with an importance
    matrix: an hour or more per 7B run here) get time and RAM proportional to their cost features,
    scaled from the largest size measured: a completed run, or one stopped by ``--timeout`` whose
    layers projected the total (``layers.projected_total_s``; its peak is that of the layers it ran).
    Rougher than the fitted model (no intercept, no check on another size), and said so."""
    out: dict[str, Any] = {}
    best: dict[str, dict] = {}
    rank = {s: i for i, s in enumerate(order)}
    for r in rows:
        total = measured_wall(r)
        if r["scheme"] in skip or not total or r["size"] not in rank:
            continue
        if r["scheme"] not in best or rank[r["size"]] > rank[best[r["scheme"]]["size"]]:
            best[r["scheme"]] = {**r, "_total": total}
    for scheme, r in best.items():
        f = features_of(scheme, r["size"])
        ram = [0.0, r["peak_anon_gib"] / (f["ram_bytes"] / GIB)]
        wall = [0.0, r["_total"] / f["work"]]
        out[scheme] = {"ram": ram, "wall": wall, "ram_all": ram, "wall_all": wall, "fitted_on": [r["size"]],
                       "checked_on": None, "check": None, "one_size": True,
                       **({"projected": [r["size"]]} if r.get("exit") != 0 else {})}
    return out


def write_coefficients(fit: dict[str, Any], source: str, path: Path = COSTS_FILE, cpu: str | None = None) -> None:
    """The coefficients ``project`` reads: refitted on every measured size, the checked one included
    (the check of the fit without it is in ``source``); ``cpu``: the one whose times they fit."""
    data = {"basis": f"fitted to {source} (scripts/bench_scale.py)", **({"cpu": cpu} if cpu else {}), "schemes": {
        s: {"ram": f["ram_all"], "wall": f["wall_all"], "check": f["check"],
            "sizes": f["fitted_on"] + ([f["checked_on"]] if f["checked_on"] else []),
            **({"one_size": True} if f.get("one_size") else {}),
            **({"projected": f["projected"]} if f.get("projected") else {})}
        for s, f in fit.items()}}
    Path(path).write_text(json.dumps(data, indent=1) + "\n", encoding="utf-8")
