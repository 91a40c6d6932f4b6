"""Model cards and Hub pushes, on real llmq folders (tiny random Llama, quantized on CPU).

The Hub is mocked at the ``huggingface_hub.HfApi`` method level; one opt-in test pushes for real
when ``LLMQ_HUB_TEST_REPO`` and ``HF_TOKEN`` are set.
"""

from __future__ import annotations

import fnmatch
import json
import os
import random
import re
import shlex
import shutil
import socket
from pathlib import Path

import pytest

import llmq
from llmq import publish
from llmq.errors import LlmqError, ModelNotFoundError

ROOT = Path(__file__).resolve().parent.parent
SECRET = "hf_llmqTestTokenThatMustNeverLeak0123456789"


# -- fixtures -----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def folders(tiny_model_dir, tmp_path_factory) -> dict[str, Path]:
    """Real llmq folders: three fast schemes on CPU (~10 s together)."""
    base = tmp_path_factory.mktemp("published")
    out = {}
    for scheme in ("bnb-nf4", "int8-dynamic", "fp16"):
        out[scheme] = llmq.quantize(tiny_model_dir, scheme, device="cpu").save(base / f"tiny-{scheme}")
    return out


@pytest.fixture
def nf4(folders, tmp_path) -> Path:
    """A private copy, so tests that write README.md or report.json do not leak into each other."""
    return Path(shutil.copytree(folders["bnb-nf4"], tmp_path / "tiny-bnb-nf4"))


def make_report(folder: Path, seed: int = 1, *, tasks=("arc_easy", "piqa"), ppl=True, kld=True, gate=True) -> dict:
    """A report.json in the evaluator's schema, with random full-precision values, so the card's
    rounding is checked against numbers it cannot have been tuned for."""
    rng = random.Random(seed)

    def side(quant: bool) -> dict:
        return {
            "path": str(folder) if quant else "/models/original",
            "size_bytes": rng.randint(10**5, 10**9),
            "param_memory_bytes": rng.randint(10**5, 10**9),
            "peak_rss_bytes": rng.randint(10**8, 10**10),
            "load_time_s": rng.uniform(0.1, 30),
            "prefill_tokens_per_s": rng.uniform(10, 5000),
            "decode_tokens_per_s": rng.uniform(1, 200),
            "perplexity": {"value": rng.uniform(5, 80), "tokens": 4096, "windows": 16,
                           "protocol": "wikitext2 test, seqlen 256, 16 windows"} if ppl else None,
            "tasks": {t: {"acc": rng.random(), "acc_norm": rng.random() if t != "piqa" else None,
                          "n": 200, "protocol": f"{t} 0-shot, first 200"} for t in tasks},
            "kld": ({"mean": rng.uniform(0, 0.5), "p99": rng.uniform(0.5, 5), "same_top": rng.random(),
                     "tokens": 4096, "protocol": "wikitext2 test, 16 windows"} if quant and kld else None),
        }

    report = {
        "protocol": {"ppl": "wikitext2 test split, seqlen 256, stride 256, 16 windows" if ppl else None,
                     "tasks": {t: f"lm-eval {t}, 0-shot, limit 200" for t in tasks}},
        "original": side(False),
        "quantized": side(True),
        "gate": ({"passed": False, "verdict": "perplexity rose more than allowed",
                  "checks": [{"name": "max_ppl_increase", "passed": False, "message": "ppl +9.1% > 5%"},
                             {"name": "max_kld", "passed": True, "message": "kld 0.01 <= 0.05"}]} if gate else None),
    }
    (folder / "report.json").write_text(json.dumps(report))
    return report


def sections(card: str) -> dict[str, str]:
    out, name = {}, "_head"
    for line in card.splitlines():
        if line.startswith("## "):
            name = line[3:].strip()
            out[name] = ""
        else:
            out[name] = out.get(name, "") + line + "\n"
    return out


def table(text: str) -> list[list[str]]:
    rows = [[c.strip() for c in line.strip().strip("|").split("|")] for line in text.splitlines()
            if line.startswith("|") and not re.match(r"^\|[-| ]+\|$", line)]
    return rows[1:]  # drop the header


def number(cell: str) -> float | None:
    """The first number in a cell ("1,234 (1.2 KB)" -> 1234; "45.20%" -> 45.2); None for "not measured"."""
    if cell in ("not measured", "", "(reference)"):
        return None
    m = re.search(r"[-+]?\d[\d,]*\.?\d*(?:e[-+]?\d+)?", cell)
    assert m, f"no number in {cell!r}"
    return float(m.group().replace(",", ""))


def close(shown: float, exact: float, decimals: int) -> bool:
    """Shown with ``decimals`` decimals: equal to the exact value up to that rounding."""
    return abs(shown - exact) <= 0.5 * 10 ** -decimals + 1e-12


def decimals_of(cell: str) -> int:
    m = re.search(r"\d\.(\d+)", cell)
    return len(m.group(1)) if m else 0


@pytest.fixture
def offline_hub(monkeypatch):
    """The Hub reads as unreachable whatever network CI has (the real check, forced)."""
    import llmq.models as models

    def unreachable(what, timeout=3.0):
        raise ModelNotFoundError(f"Cannot reach the Hugging Face Hub for {what!r}: offline or no network.")

    monkeypatch.setattr(models, "check_hub_reachable", unreachable)


@pytest.fixture
def fake_hub(monkeypatch):
    """Record every HfApi call; the Hub is 'reachable', the repo does not exist yet, the token is SECRET."""
    import huggingface_hub
    from huggingface_hub import HfApi
    from huggingface_hub.errors import RepositoryNotFoundError

    import llmq.models as models

    calls: list[tuple[str, tuple, dict]] = []
    state = {"remote": None, "upload_error": None}

    def rec(name, result=None):
        def f(self, *a, **kw):
            calls.append((name, a, kw))
            assert self.token == SECRET
            return result(*a, **kw) if callable(result) else result
        return f

    def list_files(repo_id, revision=None, **kw):
        if state["remote"] is None:
            raise RepositoryNotFoundError("404 repo not found", response=http_response(404))
        return list(state["remote"])

    class Commit:
        commit_url = "https://huggingface.co/me/tiny/commit/abc"

    def upload(**kw):
        if state["upload_error"]:
            raise state["upload_error"]
        return Commit()

    monkeypatch.setattr(HfApi, "list_repo_files", rec("list_repo_files", list_files))
    monkeypatch.setattr(HfApi, "create_repo", rec("create_repo", "https://huggingface.co/me/tiny"))
    monkeypatch.setattr(HfApi, "create_branch", rec("create_branch"))
    monkeypatch.setattr(HfApi, "upload_folder", rec("upload_folder", upload))
    monkeypatch.setattr(models, "check_hub_reachable", lambda what, timeout=3.0: None)

    class BaseCard:
        class data:
            @staticmethod
            def to_dict():
                return {"license": "apache-2.0", "language": ["en"]}

    def load(repo_id, *a, **kw):
        calls.append(("ModelCard.load", (repo_id,), kw))
        return BaseCard()

    monkeypatch.setattr(huggingface_hub.ModelCard, "load", staticmethod(load))
    monkeypatch.setenv("HF_TOKEN", SECRET)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    return calls, state


def http_response(status: int):
    """What huggingface_hub's HTTP errors read from a response (its HTTP client varies across versions)."""
    from types import SimpleNamespace

    return SimpleNamespace(status_code=status, headers={}, request=None, url="https://huggingface.co/api/models/x")


def snapshot(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def called(calls, name):
    return [(a, kw) for n, a, kw in calls if n == name]


# -- the card -----------------------------------------------------------------------------------
def test_card_parses_and_metadata_roundtrips(nf4, offline_hub):
    from huggingface_hub import ModelCard

    report = make_report(nf4)
    text = publish.render_card(nf4, repo_id="me/tiny-nf4")
    card = ModelCard(text)
    data = card.data.to_dict()
    assert data["library_name"] == "transformers" and data["pipeline_tag"] == "text-generation"
    assert data["tags"] == ["llmq", "bitsandbytes", "nf4", "4-bit", "quantized"]
    assert data["quantized_by"] == "me" and card.data.model_name == "tiny-nf4"
    assert data["model-index"][0]["name"] == "tiny-nf4"
    assert "base_model" not in data and "license" not in data  # a local base model: no Hub id, license unknown
    # model-index: exactly the quantized model's measured values, unrounded
    got = {(r.dataset_type, r.metric_type): r.metric_value for r in card.data.eval_results}
    q = report["quantized"]
    want = {("Salesforce/wikitext", "perplexity"): q["perplexity"]["value"],
            ("allenai/ai2_arc", "acc"): q["tasks"]["arc_easy"]["acc"],
            ("allenai/ai2_arc", "acc_norm"): q["tasks"]["arc_easy"]["acc_norm"],
            ("ybisk/piqa", "acc"): q["tasks"]["piqa"]["acc"]}
    assert got == want
    splits = {r.dataset_type: (r.dataset_name, r.dataset_config, r.dataset_split) for r in card.data.eval_results}
    assert splits == {"Salesforce/wikitext": ("WikiText-2", "wikitext-2-raw-v1", "test"),
                      "allenai/ai2_arc": ("ARC-Easy", "ARC-Easy", "test"),  # the split llmq's tasks read
                      "ybisk/piqa": ("PIQA", None, "validation")}
    assert {r.metric_name for r in card.data.eval_results if r.metric_type != "perplexity"} == {"acc (n=200)",
                                                                                              "acc_norm (n=200)"}
    # round trip: the YAML written, parsed back and written again is the same document
    again = ModelCard(str(card))
    assert again.data.to_dict() == data
    assert [r.metric_value for r in again.data.eval_results] == [r.metric_value for r in card.data.eval_results]


def test_every_number_on_the_card_comes_from_llmq_json_and_report(nf4, offline_hub):
    meta = json.loads((nf4 / "llmq.json").read_text())
    report = make_report(nf4, seed=7)
    parts = sections(publish.render_card(nf4, repo_id="me/tiny-nf4"))

    quant = dict(table(parts["Quantization"]))
    assert number(quant["Parameters"]) == meta["parameters"]
    assert number(quant["Weight bits"]) == meta["bits"]
    assert number(quant["Wall time (s)"]) == meta["wall_time_s"]
    assert quant["Created"] == meta["created"] and f"`{meta['device']}`" == quant["Quantized on"]
    for pkg, version in meta["versions"].items():
        assert f"{pkg} {version}" in quant["Software"]
    blocks = re.findall(r"```json\n(.*?)\n```", parts["Quantization"], re.S)
    assert [json.loads(b) for b in blocks] == [meta["config"], meta["quantization_config"]]

    size = dict(table(parts["Size"]))
    assert number(size["Original"]) == meta["size_bytes"]["before"]
    assert number(size["Quantized"]) == meta["size_bytes"]["after"]
    assert number(size["Compression ratio"]) == meta["compression_ratio"]

    o, q = report["original"], report["quantized"]
    expected = {  # label -> (original, quantized, kind of change)
        "Perplexity (wikitext2), lower is better": (o["perplexity"]["value"], q["perplexity"]["value"], "rel"),
        "arc_easy acc": (o["tasks"]["arc_easy"]["acc"], q["tasks"]["arc_easy"]["acc"], "pts"),
        "arc_easy acc_norm": (o["tasks"]["arc_easy"]["acc_norm"], q["tasks"]["arc_easy"]["acc_norm"], "pts"),
        "piqa acc": (o["tasks"]["piqa"]["acc"], q["tasks"]["piqa"]["acc"], "pts"),
        "KL divergence to original, mean": (None, q["kld"]["mean"], None),
        "KL divergence to original, p99": (None, q["kld"]["p99"], None),
        "Same top-1 token as original": (None, q["kld"]["same_top"], None),
        "Size on disk (bytes)": (o["size_bytes"], q["size_bytes"], "rel"),
        "Parameter memory (bytes)": (o["param_memory_bytes"], q["param_memory_bytes"], "rel"),
        "Peak RSS (bytes)": (o["peak_rss_bytes"], q["peak_rss_bytes"], "rel"),
        "Load time (s)": (o["load_time_s"], q["load_time_s"], "rel"),
        "Prefill (tokens/s)": (o["prefill_tokens_per_s"], q["prefill_tokens_per_s"], "rel"),
        "Decode (tokens/s)": (o["decode_tokens_per_s"], q["decode_tokens_per_s"], "rel"),
    }
    rows = table(parts["Evaluation"])
    assert [r[0] for r in rows] == list(expected)  # no row the report cannot back (piqa has no acc_norm)
    for label, a, b, change in rows:
        exp_a, exp_b, kind = expected[label]
        for cell, exact in ((a, exp_a), (b, exp_b)):
            if exact is None:
                assert cell in ("(reference)",), (label, cell)
                continue
            shown = number(cell)
            if cell.endswith("%"):
                exact = exact * 100
            if "bytes" in label:
                assert shown == exact, label  # bytes are exact integers
            elif label.startswith("KL"):
                assert abs(shown - exact) <= abs(exact) * 5e-4, (label, cell, exact)  # 4 significant digits
            else:
                assert close(shown, exact, decimals_of(cell)), (label, cell, exact)
        if kind == "rel":
            assert close(number(change), (exp_b / exp_a - 1) * 100, 2) and change.endswith("%"), (label, change)
        elif kind == "pts":
            assert close(number(change), (exp_b - exp_a) * 100, 2) and change.endswith("pts"), (label, change)
        else:
            assert change == ""
    ev = parts["Evaluation"]
    assert "Accuracy gate: FAILED." in ev and "perplexity rose more than allowed" in ev
    assert "FAILED: ppl +9.1% > 5%" in ev and "passed: kld 0.01 <= 0.05" in ev
    for text in [report["protocol"]["ppl"], *report["protocol"]["tasks"].values()]:
        assert text in ev


def test_unevaluated_folder_says_not_measured_and_has_no_model_index(folders, offline_hub):
    from huggingface_hub import ModelCard

    text = publish.render_card(folders["int8-dynamic"])
    card = ModelCard(text)
    assert card.data.eval_results is None and "model-index" not in text
    ev = sections(text)["Evaluation"]
    assert "Not measured" in ev and "|" not in ev
    assert "Quality after quantization was not measured" in text
    above = [l for l in text.split("## Limitations")[0].splitlines() if not l.startswith("| Verified |")]
    assert not re.search(r"\d+\.\d+%", "\n".join(above))  # no accuracy-like number above, but the save's check


def test_missing_measurements_say_not_measured(nf4, offline_hub):
    from huggingface_hub import ModelCard

    make_report(nf4, ppl=False, kld=False, gate=False, tasks=("arc_easy",))
    text = publish.render_card(nf4)
    rows = {r[0]: r for r in table(sections(text)["Evaluation"])}
    assert rows["Perplexity (dataset in protocol), lower is better"][1:3] == ["not measured", "not measured"]
    assert rows["KL divergence to original, mean"][2] == "not measured"
    assert "No accuracy gate was set" in text
    metrics = {r.metric_type for r in ModelCard(text).data.eval_results}
    assert metrics == {"acc", "acc_norm"}  # no perplexity entry without a perplexity


def test_rule_of_thumb_and_hardware_notes(folders, offline_hub):
    from llmq.advisor.rules import size_band

    meta = json.loads((folders["bnb-nf4"] / "llmq.json").read_text())
    band = size_band(meta["parameters"])
    nf4 = sections(publish.render_card(folders["bnb-nf4"]))["Limitations"]
    assert f'"{band.verdict}"' in nf4 and f"{band.four_bit_loss[0]:g}-{band.four_bit_loss[1]:g}%" in nf4
    assert f"{meta['parameters']:,} parameters" in nf4 and "CUDA" in nf4
    i8 = sections(publish.render_card(folders["int8-dynamic"]))["Limitations"]
    assert "rule of thumb" not in i8 and "torchao" in i8  # 8-bit: no 4-bit warning


@pytest.mark.parametrize("scheme", ["bnb-nf4", "int8-dynamic", "fp16"])
def test_reproduce_command_rebuilds_the_same_config(folders, scheme, offline_hub):
    from llmq.cli import build_parser
    from llmq.cli.run import overrides_from_args
    from llmq.schemes import get_scheme

    meta = json.loads((folders[scheme] / "llmq.json").read_text())
    text = publish.render_card(folders[scheme])
    block = re.search(r"## Reproduce\n\n```bash\n(.*?)\n```", text, re.S).group(1).splitlines()
    extra = get_scheme(scheme).backend_cls().extra
    assert block[0] == f'pip install "llmq{f"[{extra}]" if extra else ""}=={meta["versions"]["llmq"]}"'
    argv = shlex.split(block[1])
    assert argv[:4] == ["python", "-m", "llmq", "run"]
    args = build_parser().parse_args(argv[3:])
    assert args.model == meta["source"]["name"] and args.scheme == scheme and args.device == meta["device"]
    assert get_scheme(scheme).config(**overrides_from_args(args)).to_dict() == meta["config"]


def test_reproduce_command_for_calibrated_and_tuned_configs():
    """Non-default options and calibration survive the trip through the command line."""
    from llmq.cli import build_parser
    from llmq.cli.run import overrides_from_args
    from llmq.schemes import get_scheme

    cfg = get_scheme("gptq-int4").config(group_size=64, damp_percent=0.1, sym=False, skip_modules=("mlp.down_proj",),
                                         calibration="builtin", n_samples=32, seqlen=256, seed=3).to_dict()
    meta = {"scheme": "gptq-int4", "config": cfg, "device": "cuda",
            "source": {"name": "HuggingFaceTB/SmolLM2-135M", "kind": "hub", "revision": "main"}}
    cmd, note = publish.reproduce_command(meta)
    args = build_parser().parse_args(shlex.split(cmd)[3:])
    assert args.revision == "main" and note is None
    assert get_scheme("gptq-int4").config(**overrides_from_args(args)).to_dict() == cfg
    meta["config"] = dict(cfg, calibration="<12 strings>")
    cmd, note = publish.reproduce_command(meta)
    assert "--calibration" not in cmd and "list of strings" in note


# -- dry run ----------------------------------------------------------------------------------
def test_dry_run_lists_exactly_the_folder_files_without_network(nf4, monkeypatch, capsys):
    from huggingface_hub import HfApi

    from llmq.cli import main

    def no_network(*a, **kw):
        raise AssertionError("dry run touched the network")

    monkeypatch.setattr(socket, "create_connection", no_network)
    for name in ("list_repo_files", "create_repo", "upload_folder"):
        monkeypatch.setattr(HfApi, name, no_network)
    monkeypatch.delenv("HF_TOKEN", raising=False)
    (nf4 / "extra").mkdir()
    (nf4 / "extra" / "notes.txt").write_text("kept")
    (nf4 / ".README.md.tmp123").write_text("leftover of a killed write")
    res = publish.push(nf4, "me/tiny-nf4", dry_run=True)
    on_disk = {p.relative_to(nf4).as_posix(): p.stat().st_size for p in nf4.rglob("*")
               if p.is_file() and not p.name.startswith(".")}
    assert dict(res.files) == on_disk and "README.md" in on_disk and "extra/notes.txt" in on_disk
    assert res.total_bytes == sum(on_disk.values()) and res.dry_run and res.card_written
    assert res.card == nf4 / "README.md" and "me/tiny-nf4" in res.card.read_text()
    # the CLI prints the same list and total
    capsys.readouterr()
    assert main(["push", str(nf4), "--repo", "me/tiny-nf4", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert f"would upload {len(on_disk)} files" in out and f"{sum(on_disk.values()):,} bytes" in out
    for name, size in on_disk.items():
        assert re.search(rf"^\s+{re.escape(name)}\s+{size:,}$", out, re.M), name


def test_user_written_readme_is_kept(nf4):
    (nf4 / "README.md").write_text("# My own card\n")
    res = publish.push(nf4, "me/tiny-nf4", dry_run=True)
    assert not res.card_written and (nf4 / "README.md").read_text() == "# My own card\n"
    assert any("not written by llmq" in n for n in res.notes)


# -- push (mocked Hub) -----------------------------------------------------------------------
def test_push_calls_the_hub_with_the_right_arguments(nf4, fake_hub, capsys):
    calls, state = fake_hub
    make_report(nf4)
    res = publish.push(nf4, "me/tiny-nf4", private=True, commit_message="first upload")
    (create_a, create_kw), = called(calls, "create_repo")
    assert create_a == ("me/tiny-nf4",) and create_kw == {"private": True, "exist_ok": True, "repo_type": "model"}
    (_, up), = called(calls, "upload_folder")
    assert up["repo_id"] == "me/tiny-nf4" and Path(up["folder_path"]) == nf4 and up["repo_type"] == "model"
    assert up["commit_message"] == "first upload" and up["revision"] is None and up["delete_patterns"] is None
    assert up["ignore_patterns"] == publish.IGNORE_PATTERNS
    assert not called(calls, "create_branch")
    assert [n for n, _, _ in calls].index("create_repo") < [n for n, _, _ in calls].index("upload_folder")
    assert res.method == "upload_folder" and res.commit_url.endswith("/commit/abc")
    # the card was written before the upload, so it is part of it
    assert "README.md" in dict(res.files) and res.card.read_text().startswith("---")
    # the token is never printed or written
    out = capsys.readouterr()
    assert SECRET not in out.out + out.err
    assert all(SECRET.encode() not in b for b in snapshot(nf4).values())


def test_license_is_inherited_from_the_base_model_card(nf4, fake_hub):
    from huggingface_hub import ModelCard

    calls, _ = fake_hub
    meta = json.loads((nf4 / "llmq.json").read_text())
    meta["source"] = {"name": "HuggingFaceTB/SmolLM2-135M", "kind": "hub", "base_model": "HuggingFaceTB/SmolLM2-135M",
                      "revision": None}
    (nf4 / "llmq.json").write_text(json.dumps(meta))
    publish.push(nf4, "me/tiny-nf4")
    card = ModelCard((nf4 / "README.md").read_text())
    assert card.data.license == "apache-2.0" and card.data.base_model == "HuggingFaceTB/SmolLM2-135M"
    assert card.data.to_dict()["base_model_relation"] == "quantized"
    assert called(calls, "ModelCard.load")[0][0] == ("HuggingFaceTB/SmolLM2-135M",)
    assert "inherited from [HuggingFaceTB/SmolLM2-135M]" in card.text


def test_license_unknown_offline_is_said_not_guessed(nf4, offline_hub):
    from huggingface_hub import ModelCard

    meta = json.loads((nf4 / "llmq.json").read_text())
    meta["source"] = {"name": "org/model", "kind": "hub", "base_model": "org/model", "revision": None}
    (nf4 / "llmq.json").write_text(json.dumps(meta))
    card = ModelCard(publish.render_card(nf4))
    assert "license" not in card.data.to_dict()
    assert "could not be reached" in card.text and "check it before use" in card.text


def test_existing_repo_with_other_content_is_refused(nf4, fake_hub):
    calls, state = fake_hub
    state["remote"] = [".gitattributes", "README.md", "pytorch_model.bin"]
    before = snapshot(nf4)
    with pytest.raises(LlmqError) as e:
        publish.push(nf4, "me/tiny-nf4")
    assert "pytorch_model.bin" in str(e.value) and "--overwrite" in str(e.value) and "\n" not in str(e.value)
    assert snapshot(nf4) == before and not called(calls, "upload_folder") and not called(calls, "create_repo")
    # --overwrite deletes exactly the remote files the folder does not have
    publish.push(nf4, "me/tiny-nf4", overwrite=True)
    assert called(calls, "upload_folder")[-1][1]["delete_patterns"] == ["pytorch_model.bin"]
    # --revision pushes to a branch, created first
    publish.push(nf4, "me/tiny-nf4", revision="int4-test")
    assert called(calls, "create_branch")[-1] == (("me/tiny-nf4",), {"branch": "int4-test", "exist_ok": True})
    assert called(calls, "upload_folder")[-1][1]["revision"] == "int4-test"


def test_repush_of_the_same_folder_is_allowed(nf4, fake_hub):
    """A repo holding only this folder's files (an earlier or interrupted push) is not 'other content'."""
    calls, state = fake_hub
    state["remote"] = [".gitattributes", "llmq.json", "model.safetensors"]
    publish.push(nf4, "me/tiny-nf4")
    assert called(calls, "upload_folder")[-1][1]["delete_patterns"] is None


def test_large_folder_uses_upload_large_folder_when_the_client_has_it(nf4, fake_hub, monkeypatch):
    from huggingface_hub import HfApi

    calls, _ = fake_hub
    monkeypatch.setattr(publish, "LARGE_FOLDER_BYTES", 1000)
    seen = {}
    monkeypatch.setattr(HfApi, "upload_large_folder", lambda self, **kw: seen.update(kw), raising=False)
    res = publish.push(nf4, "me/tiny-nf4", private=True)
    assert res.method == "upload_large_folder" and not called(calls, "upload_folder")
    assert seen["repo_id"] == "me/tiny-nf4" and Path(seen["folder_path"]) == nf4 and seen["private"] is True
    assert seen["repo_type"] == "model"


def test_failed_upload_leaves_the_folder_as_it_was(nf4, fake_hub):
    from huggingface_hub.errors import HfHubHTTPError

    calls, state = fake_hub
    state["upload_error"] = HfHubHTTPError(f"403 Forbidden token={SECRET}", response=http_response(403))
    before = snapshot(nf4)
    with pytest.raises(LlmqError) as e:
        publish.push(nf4, "me/tiny-nf4")
    msg = str(e.value)
    assert "403" in msg and "write access" in msg and SECRET not in msg and "\n" not in msg
    assert snapshot(nf4) == before  # the card written for the upload was removed again


@pytest.mark.parametrize("case", ["no_token", "unreachable", "offline_env", "not_llmq", "bad_repo"])
def test_push_errors_are_one_line_and_touch_nothing(case, nf4, tiny_model_dir, monkeypatch, tmp_path):
    from llmq.cli import main

    folder, repo = nf4, "me/tiny-nf4"
    monkeypatch.setenv("HF_TOKEN", SECRET)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    if case == "no_token":
        import llmq.models as models

        monkeypatch.delenv("HF_TOKEN")
        monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))  # no stored login either
        monkeypatch.setattr(models, "check_hub_reachable", lambda what, timeout=3.0: None)
        expect = "No Hugging Face token"
    elif case == "unreachable":
        monkeypatch.setattr(socket, "create_connection", lambda *a, **k: (_ for _ in ()).throw(OSError("no route")))
        monkeypatch.setattr("llmq.models._REACHABLE", {})
        monkeypatch.delenv("HTTPS_PROXY", raising=False)
        monkeypatch.delenv("https_proxy", raising=False)
        monkeypatch.delenv("ALL_PROXY", raising=False)
        monkeypatch.delenv("all_proxy", raising=False)
        expect = "Cannot reach the Hugging Face Hub"
    elif case == "offline_env":
        monkeypatch.setenv("HF_HUB_OFFLINE", "1")
        expect = "HF_HUB_OFFLINE is set"
    elif case == "not_llmq":
        folder = Path(shutil.copytree(tiny_model_dir, tmp_path / "plain"))
        expect = "is not an llmq folder"
    else:
        repo = "not a repo id"
        expect = "Invalid Hub repo id"
    before = snapshot(folder)
    with pytest.raises(LlmqError) as e:
        publish.push(folder, repo)
    assert expect in str(e.value) and "\n" not in str(e.value) and SECRET not in str(e.value)
    assert snapshot(folder) == before
    assert main(["push", str(folder), "--repo", repo]) == 2


@pytest.mark.parametrize("repo", ["me/x..y", "me/x-", "me/.x.", "no-owner", "me/" + "x" * 100, "me/a b"])
def test_push_dry_run_and_run_push_to_hub_refuse_the_same_ids(repo, nf4, tiny_model_dir, tmp_path, monkeypatch):
    """``push --dry-run`` accepted ids that ``run --push-to-hub`` refused: both now call the one
    ``llmq.hub.check_repo_id``, the run before any weight loads."""
    from llmq import hub
    from llmq.pipeline.run import run

    assert publish.check_repo_id is hub.check_repo_id
    before = snapshot(nf4)
    with pytest.raises(LlmqError, match="Invalid Hub repo id"):
        publish.push(nf4, repo, dry_run=True)
    assert snapshot(nf4) == before  # no card written
    monkeypatch.setattr(llmq.core, "quantize", lambda *a, **k: pytest.fail("quantized before the repo id check"))
    with pytest.raises(LlmqError, match="Invalid Hub repo id"):
        run(str(tiny_model_dir), "fp16", output=tmp_path / "o", device="cpu", push_to_hub=repo)
    assert not (tmp_path / "o").exists()


def test_dry_run_accepts_what_run_accepts(nf4, offline_hub):
    for repo in ("me/SmolLM2-135M-GPTQ-Int4", "org.name/model_v1.5"):
        hub_ok = publish.push(nf4, repo, dry_run=True)
        assert hub_ok.url.endswith(repo)


def test_broken_card_template_is_one_line_before_anything_is_written(nf4, tmp_path):
    from llmq.cli import main

    tpl = tmp_path / "card.md"
    tpl.write_text("# {{ title }}\n{% if x %}oops {{ y }\n")
    before = snapshot(nf4)
    with pytest.raises(LlmqError, match="card.md line 2: unexpected '}'") as e:
        publish.push(nf4, "me/x", dry_run=True, template=tpl)
    assert "\n" not in str(e.value) and snapshot(nf4) == before
    assert main(["push", str(nf4), "--repo", "me/x", "--dry-run", "--template", str(tpl)]) == 2


# -- packaging ----------------------------------------------------------------------------------
def test_template_ships_with_the_package_and_model_cards_points_to_it():
    tpl = publish.template_path()
    assert tpl.is_file() and tpl.parent.name == "templates" and tpl.parent.parent == Path(publish.__file__).parent
    import tomllib

    globs = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["llmq"]
    assert any(fnmatch.fnmatch(f"templates/{tpl.name}", g) for g in globs)  # installed non-editable too
    assert "llmq/templates/modelcard.md" in (ROOT / "model_cards" / "README.md").read_text()


def test_custom_template(nf4, tmp_path, offline_hub):
    tpl = tmp_path / "mine.md"
    tpl.write_text("---\n{{ card_data }}\n---\n\n# {{ title }} by me\n\n{{ reproduce.command }}\n")
    text = publish.render_card(nf4, repo_id="me/x", template=tpl)
    assert "# x by me" in text and "--scheme bnb-nf4" in text


# -- real model, real Hub -------------------------------------------------------------------------
@pytest.mark.slow
def test_demo_card_says_the_weights_came_from_gguf(tmp_path, offline_hub):
    """The offline demo (SmolLM2-135M-Instruct from a Q4_1 GGUF): base_model is the Hub id, the card
    says 'original' means the dequantized GGUF weights, and the reproduce command is the demo's."""
    from huggingface_hub import ModelCard

    from llmq.models import DEMO_GGUF

    out = llmq.quantize(None, "fp16", device="cpu").save(tmp_path / "smol-fp16")
    card = ModelCard(publish.render_card(out, repo_id="me/SmolLM2-135M-Instruct-fp16"))
    assert card.data.base_model == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert DEMO_GGUF in card.text and "dequantized" in card.text
    cmd = re.search(r"(python -m llmq run .*)", card.text).group(1)
    assert "--model" not in cmd and "--scheme fp16" in cmd
    assert "vllm serve me/SmolLM2-135M-Instruct-fp16 --dtype float16" in card.text


def test_live_push_to_the_hub(folders, tmp_path):
    repo = os.environ.get("LLMQ_HUB_TEST_REPO")
    if not (repo and os.environ.get("HF_TOKEN")):
        pytest.skip("opt-in live Hub test: set LLMQ_HUB_TEST_REPO=owner/name and HF_TOKEN (write) to run it")
    from huggingface_hub import HfApi, ModelCard

    folder = Path(shutil.copytree(folders["int8-dynamic"], tmp_path / "live"))
    res = publish.push(folder, repo, private=True, overwrite=True)
    remote = set(HfApi().list_repo_files(repo))
    assert {name for name, _ in res.files} <= remote
    card = ModelCard.load(repo)
    assert card.data.to_dict()["tags"][0] == "llmq" and "int8-dynamic" in card.text


def test_card_never_shows_a_local_path_for_the_original(tmp_path, monkeypatch):
    from llmq.publish import original_label

    monkeypatch.setenv("LLMQ_CACHE", str(tmp_path / "cache"))
    cached = tmp_path / "cache" / "gguf" / "SmolLM2-135M-Instruct.Q4_1-abc"
    assert original_label(str(cached), "SmolLM2-135M-Instruct.Q4_1.gguf") == \
        "the original weights (dequantized from `SmolLM2-135M-Instruct.Q4_1.gguf`)"
    local = original_label(str(tmp_path / "my-model"), None)
    assert str(tmp_path) not in local and "`my-model`" in local
    assert original_label("HuggingFaceTB/SmolLM2-135M", None) == "the original weights (`HuggingFaceTB/SmolLM2-135M`)"


def test_card_shows_the_verification_from_llmq_json(nf4, tmp_path, offline_hub):
    meta = json.loads((nf4 / "llmq.json").read_text())
    v = meta["verification"]
    row = dict(table(sections(publish.render_card(nf4))["Quantization"]))["Verified"]
    assert row.startswith("passed: mean KL divergence ") and number(row) == float(f"{v['kld']:.3g}")
    assert f"(bound {v['bound']:g})" in row and f"{100 * v['top1']:.1f}%" in row and f"{v['tokens']:,} tokens" in row
    for record, text in (({"skipped": True, "reason": "verify=False, --no-verify"}, "no: skipped (verify=False"),
                         (None, "not recorded")):
        meta["verification"] = record
        (nf4 / "llmq.json").write_text(json.dumps(meta))
        assert dict(table(sections(publish.render_card(nf4))["Quantization"]))["Verified"].startswith(text)


def test_a_folder_that_failed_verification_is_never_published(nf4, fake_hub):
    meta = json.loads((nf4 / "llmq.json").read_text())
    meta["verification"] = {**meta["verification"], "passed": False, "kld": 6.2}
    (nf4 / "llmq.json").write_text(json.dumps(meta))
    before = snapshot(nf4)
    for dry in (True, False):
        with pytest.raises(LlmqError, match="failed its verification, so llmq does not publish it: verification "
                                            "failed: mean KL divergence 6.2"):
            publish.push(nf4, "me/tiny", dry_run=dry)
    calls, _ = fake_hub
    assert snapshot(nf4) == before and not called(calls, "upload_folder") and not called(calls, "create_repo")
