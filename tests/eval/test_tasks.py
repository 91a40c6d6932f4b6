"""Task accuracy: each shape on a 5-example file whose answers are worked out by hand from a toy
bigram model, configurable field names, errors. Agreement with lm-evaluation-harness on SmolLM2:
tests/eval/test_lm_eval_bridge.py."""

import json
import math
import warnings
from types import SimpleNamespace

import pytest
import torch

from llmq.errors import LlmqError, UnknownNameError
from llmq.eval.tasks import TaskDataError, TaskSpec, load_rows, resolve_task, run_task

VOCAB = list(" abkxy?:") + ["<eos>"]
IDX = {c: i for i, c in enumerate(VOCAB)}
V = len(VOCAB)


class CharTok:
    """One token per character; no BOS, EOS = '<eos>'."""

    bos_token_id = None
    eos_token_id = IDX["<eos>"]

    def encode(self, text, add_special_tokens=True):
        return [IDX[c] for c in text]


# Next-token probabilities given the current token (everything else shares the remaining mass):
#   after ' ': 'a' .5, 'b' .2        after 'a': 'a' .6, ' ' .2
#   after 'k': ' ' .8                after anything else: ' ' .4
TABLE = {" ": {"a": .5, "b": .2}, "a": {"a": .6, " ": .2}, "k": {" ": .8}}


def P(cur, nxt):
    spec = TABLE.get(cur, {" ": .4})
    return spec.get(nxt, (1 - sum(spec.values())) / (V - len(spec)))


class _Cache:
    """A bigram model needs no past; the methods llmq calls to expand a real KV cache are no-ops."""

    def batch_select_indices(self, indices):
        self.selected = list(indices)


class BigramLM(torch.nn.Module):
    def __init__(self):
        super().__init__()
        probs = torch.tensor([[P(c, n) for n in VOCAB] for c in VOCAB], dtype=torch.float64)
        self.logp = torch.nn.Parameter(torch.log(probs).float(), requires_grad=False)
        self.config = SimpleNamespace(max_position_embeddings=64)

    def forward(self, input_ids, attention_mask=None, past_key_values=None, use_cache=False, **kw):
        return SimpleNamespace(logits=self.logp[input_ids], past_key_values=_Cache() if use_cache else None)


def lp(last_ctx_char, continuation):
    """Hand log-likelihood of `continuation` after a context ending in `last_ctx_char`."""
    prev, total = last_ctx_char, 0.0
    for c in continuation:
        total += math.log(P(prev, c))
        prev = c
    return total


def write(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


MC_ROWS = [  # context ends in '?': P(' ' | '?') is the same for every choice
    {"question": "x?", "options": ["b", "a", "x"], "answer": 1},  # a wins; norm: a too          acc 1 norm 1
    {"question": "y?", "options": ["a", "aaaa"], "answer": 1},  # a wins; norm: aaaa wins       acc 0 norm 1
    {"question": "xy?", "options": ["a", "aaaa"], "answer": 0},  # a wins; norm: aaaa            acc 1 norm 0
    {"question": "yy?", "options": ["b", "x"], "answer": 0},  # b wins                         acc 1 norm 1
    {"question": "xx?", "options": ["aaaa", "b"], "answer": 0},  # b wins; norm: aaaa            acc 0 norm 1
]


def test_hand_model_matches_the_worked_answers():
    # the comments in MC_ROWS, checked against the table (not against llmq)
    assert lp("?", " a") > lp("?", " aaaa") and lp("?", " aaaa") / 4 > lp("?", " a") / 1
    assert lp("?", " b") > lp("?", " aaaa") and lp("?", " aaaa") / 4 > lp("?", " b") / 1


def test_multiple_choice_acc_and_acc_norm_with_custom_field_names(tmp_path):
    f = write(tmp_path / "mc.jsonl", MC_ROWS)
    spec = TaskSpec("toy_mc", "multiple_choice", str(f), fields={"query": "question", "choices": "options",
                                                                 "gold": "answer"})
    for share in (2, 16):  # batch sizes below and above the number of choices
        r = run_task(BigramLM(), CharTok(), spec, batch_size=share, progress=False)
        assert r["n"] == 5 and r["acc"] == pytest.approx(3 / 5) and r["acc_norm"] == pytest.approx(4 / 5)
        assert "toy_mc" in r["protocol"] and "all 5" in r["protocol"]
    r = run_task(BigramLM(), CharTok(), spec, progress=False, per_example=True)
    assert len(r["correct"]) == 5 and sum(r["correct"]) == 3


def test_language_modelling_shape_greedy_match_and_ppl(tmp_path):
    # context ends in 'x' -> argmax ' '; after ' ' argmax 'a'; after 'a' argmax 'a'
    conts = ["a", "b", "aa", "ab", "a"]  # greedy: yes, no, yes, no, yes
    f = write(tmp_path / "lm.jsonl", [{"context": "yx", "continuation": c} for c in conts])
    r = run_task(BigramLM(), CharTok(), str(f), progress=False, per_example=True)
    assert r["acc"] == pytest.approx(3 / 5) and r["acc_norm"] is None
    assert r["correct"] == [True, False, True, False, True]  # per example, in file order
    expected_ppl = math.exp(-sum(lp("x", " " + c) for c in conts) / 5)
    assert r["ppl"] == pytest.approx(expected_ppl, rel=1e-5)


def test_schema_shape_picks_the_context_under_which_the_continuation_is_likeliest(tmp_path):
    # a context ending in 'k' makes ' ' twice as likely (.8 vs .4): that context should win
    rows = [{"contexts": ["yak", "yax"], "continuation": "a", "gold": 0},  # right
            {"contexts": ["yax", "yak"], "continuation": "a", "gold": 1},  # right
            {"contexts": ["yax", "yak"], "continuation": "b", "gold": 0},  # wrong
            {"contexts": ["xy", "bak", "xx"], "continuation": "ab", "gold": 1},  # right
            {"contexts": ["bak", "yx"], "continuation": "a", "gold": 1}]  # wrong
    f = write(tmp_path / "schema.jsonl", rows)
    spec = resolve_task(str(f))
    assert spec.shape == "schema"
    r = run_task(BigramLM(), CharTok(), spec, progress=False, per_example=True)
    assert r["acc"] == pytest.approx(3 / 5) and r["correct"] == [True, True, False, True, False]
    assert "correct" not in run_task(BigramLM(), CharTok(), spec, progress=False)  # reports stay small


def test_registry_names_prompts_and_local_files(data_dir):
    arc = resolve_task("arc_easy")
    rows, source = load_rows(arc, limit=3)
    assert len(rows) == 3 and "first 3 of 2376" in source
    assert arc.template.format(**rows[0]).startswith("Question: ") and arc.template.format(**rows[0]).endswith(
        "\nAnswer:")
    piqa = resolve_task("piqa")
    (row,), _ = load_rows(piqa, limit=1)
    assert piqa.template.format(**row).endswith("\nAnswer:") and "\n\n" not in piqa.template.format(**row)
    hs = resolve_task("hellaswag")
    (row,), _ = load_rows(hs, limit=1)
    assert len(row["choices"]) == 4 and row["gold"] == 3  # mapped from endings/label
    (row,), _ = load_rows(resolve_task("lambada"), limit=1)
    assert row["continuation"] == "signs"


def test_errors_are_one_line(tmp_path):
    with pytest.raises(UnknownNameError, match="arc_easy.*hellaswag.*lambada.*piqa"):
        resolve_task("winogrande")
    f = write(tmp_path / "bad.jsonl", [{"query": "q", "choices": ["a", "b"], "gold": 0},
                                       {"query": "q", "choices": ["a", "b"]}])
    with pytest.raises(TaskDataError, match=r"line 2: missing field 'gold'"):
        load_rows(resolve_task(str(f)))
    g = write(tmp_path / "gold.jsonl", [{"query": "q", "choices": ["a", "b"], "gold": 5}])
    with pytest.raises(TaskDataError, match=r"line 1: field 'gold' = 5 is not an index"):
        load_rows(resolve_task(str(g)))
    with pytest.raises(LlmqError, match="not found"):
        resolve_task(str(tmp_path / "missing.jsonl"))
    for e in (TaskDataError, UnknownNameError):
        assert issubclass(e, LlmqError)


@pytest.mark.parametrize("row, msg", [
    ({"context": "The cat sat on the", "continuation": ""}, "'continuation' = '' must be non-empty text"),
    ({"context": "x", "continuation": "  "}, "must be non-empty text"),
    ({"context": "x", "continuation": None}, "must be non-empty text"),
    ({"query": "q", "choices": ["a", ""], "gold": 0}, r"'choices'\[1\] = '' must be non-empty text"),
    ({"query": "q", "choices": ["a", 7], "gold": 0}, r"'choices'\[1\] = 7 must be non-empty text"),
    ({"contexts": ["a", 3], "continuation": "b", "gold": 0}, r"'contexts'\[1\] = 3 must be text"),
])
def test_what_is_scored_must_be_text(tmp_path, row, msg):
    """An empty continuation scores the delimiter alone: a free 'correct' answer, counted in acc."""
    f = write(tmp_path / "t.jsonl", [row])
    with pytest.raises(TaskDataError, match=msg):
        load_rows(resolve_task(str(f)))


def test_binary_task_file_is_one_line_and_rows_are_checked_before_a_model(tmp_path):
    from llmq.errors import DataError
    from llmq.eval.tasks import check_rows

    (tmp_path / "bin.jsonl").write_bytes(bytes(range(256)) * 40)
    with pytest.raises(DataError, match="does not look like text"):
        resolve_task(str(tmp_path / "bin.jsonl"))
    f = write(tmp_path / "late.jsonl", [{"context": "a", "continuation": " b"}] * 3
              + [{"context": "a", "continuation": ""}])
    spec = resolve_task(str(f))  # the first row decides the shape
    with pytest.raises(TaskDataError, match="line 4"):
        check_rows(spec)
    check_rows(spec, limit=3)  # rows past --limit are not scored, nor checked


def test_limit_beyond_the_data_uses_what_exists_and_says_so(tmp_path):
    f = write(tmp_path / "mc.jsonl", MC_ROWS)
    spec = TaskSpec("toy", "multiple_choice", str(f), fields={"query": "question", "choices": "options",
                                                              "gold": "answer"})
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        r = run_task(BigramLM(), CharTok(), spec, limit=50, progress=False)
    assert r["n"] == 5 and any("--limit 50 is more than the 5 examples" in str(x.message) for x in w)

