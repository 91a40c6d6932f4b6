"""Number formatting shared by the library and the CLI (one function per kind of number, so tests
can parse each back)."""

from __future__ import annotations

import shutil


def human_bytes(n: float | None) -> str:
    """Decimal units (1 KB = 1000 B), as file sizes are shown."""
    if n is None:
        return "n/a"
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1000
    return f"{n:.1f} TB"  # pragma: no cover


def mb(n: float | None) -> str:
    """Megabytes (decimal), the unit of report and auto tables."""
    return "n/a" if n is None else f"{n / 1e6:,.1f} MB"


def gb(n: float) -> str:
    """File sizes in the advisor: decimal units, as ``llmq run`` prints them."""
    return f"{n / 1e9:.2f} GB" if n >= 1e9 else f"{n / 1e6:.1f} MB"


def gib(n: float) -> str:
    """Memory: binary units, as torch and GPU vendors report it ("80 GB" H100 = 79.6 GiB usable)."""
    return f"{n / 1024**3:.2f} GiB"


def term_width(default: int = 140) -> int:
    return shutil.get_terminal_size((default, 24)).columns


def console(width: int | None = None):
    """The rich console the CLI prints tables with. Markup off: cells hold data (``pip install
    'llmq[gguf]'``, paths, reasons), and rich would eat ``[gguf]`` as a style tag."""
    from rich.console import Console

    return Console(width=width, markup=False)


def fmt_int(n: int | None) -> str:
    return "not measured" if n is None else f"{int(n):,}"


def fmt_bytes(n: int | None) -> str:
    """Exact bytes first (what the JSON holds), then a human size."""
    if n is None:
        return "not measured"
    return f"{int(n):,} ({human_bytes(n)})"


def fmt_float(x: float | None, digits: int = 3) -> str:
    return "not measured" if x is None else f"{x:.{digits}f}"

def fmt_pct(frac: float | None) -> str:
    """Accuracies are fractions in report.json; shown as percent with two decimals."""
    return "not measured" if frac is None else f"{frac * 100:.2f}%"

def fmt_change_rel(orig: float | None, quant: float | None) -> str:
    if orig is None or quant is None or orig == 0:
        return ""
    return f"{(quant / orig - 1) * 100:+.2f}%"

def fmt_change_pts(orig: float | None, quant: float | None) -> str:
    if orig is None or quant is None:
        return ""
    return f"{(quant - orig) * 100:+.2f} pts"

def fmt_kld(x: float | None) -> str:
    return "not measured" if x is None else f"{x:.4g}"
