"""scripts/bench_cpu_dtypes.py: one row per shape, each dtype's time and its ratio to fp32."""

import importlib.util
import json
import sys
from pathlib import Path

SCRIPTS = Path(__file__).resolve().parents[2] / "scripts"


def test_table_and_record(tmp_path, monkeypatch, capsys):
    sys.path.insert(0, str(SCRIPTS))
    spec = importlib.util.spec_from_file_location("bench_cpu_dtypes", SCRIPTS / "bench_cpu_dtypes.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    monkeypatch.setattr(mod, "SHAPES", (("tiny", 32, 64),))
    assert mod.main(["--tokens", "16", "--repeats", "2", "--json", str(tmp_path / "r.json")]) == 0
    rec = json.loads((tmp_path / "r.json").read_text())
    (row,) = rec["rows"]
    assert row["shape"] == "tiny" and row["float32_ms"] > 0
    assert {"bfloat16_ms", "float16_ms", "bfloat16_vs_fp32", "float16_vs_fp32"} <= set(row)
    assert row["bfloat16_vs_fp32"] > 0 and "float32_vs_fp32" not in row
    assert "tiny" in capsys.readouterr().out and rec["cpu"]
