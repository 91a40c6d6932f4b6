"""A ``.gguf`` source stays GGUF: llama.cpp requantizes the file itself (no transformers round trip, no
converter), on a cold cache as on a warm one, and the source's tokenizer survives every gguf-* scheme
bit for bit. The source is a tiny Llama with a SentencePiece tokenizer trained here, converted by
llmq's converter path: the case where the old route (dequantize, then llama.cpp's converter on the
transformers folder) rebuilt the vocabulary with every score at -1000."""

from __future__ import annotations

import json

import pytest

from llmq.backends.gguf import quantizer as G

TOKENIZER_ARRAYS = ("tokenizer.ggml.tokens", "tokenizer.ggml.scores", "tokenizer.ggml.token_type")
#: WikiText-2-like text with what SentencePiece vocabularies trip on: leading/double spaces, newlines,
#: digits, bytes outside the vocabulary (byte fallback), markup
PROBE = ("= Valkyria Chronicles III =\n\n Senjō no Valkyria 3 : Unrecorded Chronicles ( Japanese : 戦場のヴァルキュリア3 ,"
         " lit . Valkyria of the Battlefield 3 ) , commonly referred to as 1,234 <tag>  end.\n  \tü ñ")


def _fields(path) -> dict:
    import gguf

    r = gguf.GGUFReader(str(path))
    return {k: f.contents() for k, f in r.fields.items() if not k.startswith("GGUF.")}


def test_the_source_is_a_sentencepiece_gguf(sp_gguf):
    """The fixture is what the test claims: llama.cpp's converter wrote a SentencePiece vocabulary with
    real scores (not the -1000 placeholders of a vocabulary rebuilt from tokenizer.json)."""
    _, f32 = sp_gguf
    f = _fields(f32)
    assert f["tokenizer.ggml.model"] == "llama" and len(f["tokenizer.ggml.tokens"]) == 512
    scores = f["tokenizer.ggml.scores"]
    assert len(set(scores)) > 100 and -1000.0 not in scores[300:]
    assert f["tokenizer.ggml.token_type"][3:6] == [6, 6, 6]  # byte-fallback tokens <0x00>...: BYTE


def test_every_scheme_requantizes_the_file_with_its_tokenizer_intact_on_a_cold_cache(sp_gguf, tmp_path, monkeypatch):
    from transformers import LlamaTokenizer

    import llmq
    from llmq.models import gguf_tokenizer

    folder, f32 = sp_gguf
    cache = tmp_path / "cache"
    monkeypatch.setenv("LLMQ_CACHE", str(cache))  # cold: nothing dequantized yet, and nothing should be
    src = _fields(f32)
    src_tok = gguf_tokenizer(f32)
    hf_tok = LlamaTokenizer.from_pretrained(folder)
    assert src_tok.encode(PROBE) == hf_tok.encode(PROBE)
    for scheme, ftype in G.SCHEMES.items():
        out = llmq.quantize(str(f32), scheme).save(tmp_path / scheme)
        files = sorted(p.name for p in out.iterdir())
        assert files == ["Modelfile", "llmq.json", f"tiny-sp-{ftype}.gguf"], files
        f = out / f"tiny-sp-{ftype}.gguf"
        got = _fields(f)
        assert got["tokenizer.ggml.model"] == "llama", scheme
        for key in TOKENIZER_ARRAYS:
            assert got[key] == src[key], (scheme, key)
        # every metadata key but the file type survives as it was (llama.cpp copies them)
        changed = {k for k in src if k in got and got[k] != src[k]}
        assert changed == {"general.file_type"} and set(src) <= set(got), (scheme, changed, set(src) - set(got))
        assert G.tensor_types(f)["blk.0.attn_q.weight"] == {"Q5_K_M": "Q5_K", "Q4_K_M": "Q4_K"}.get(ftype, ftype)
        tok = gguf_tokenizer(f)  # transformers reads it, in the class of a Llama SentencePiece tokenizer
        assert isinstance(tok, LlamaTokenizer) and tok.get_vocab() == src_tok.get_vocab()
        assert tok.encode(PROBE) == src_tok.encode(PROBE)
        qc = json.loads((out / "llmq.json").read_text())["quantization_config"]
        assert qc["source_format"] == "gguf" and qc["source_ftype"] == "F32" and qc["requantized"] is False
        assert qc["converter"] is None and qc["ftype"] == ftype
    # llama.cpp read the file: no dequantized copy was made on the way
    assert not (cache / "gguf").exists() or not any((cache / "gguf").iterdir())


def test_requantizing_a_quantized_gguf_is_recorded_on_the_card(sp_gguf, tmp_path, monkeypatch):
    """From an already quantized file (Q8_0) llama.cpp requantizes (allow_requantize); llmq.json and the
    card say the errors add up and that an F32/F16 source is better."""
    import llmq
    from llmq.cardrender import render_card

    _, f32 = sp_gguf
    monkeypatch.setenv("LLMQ_CACHE", str(tmp_path / "cache"))
    q8 = tmp_path / "src" / "tiny-sp.Q8_0.gguf"
    q8.parent.mkdir()
    G.quantize_file(f32, q8, "Q8_0")
    out = llmq.quantize(str(q8), "gguf-q4_k_m").save(tmp_path / "q4")
    meta = json.loads((out / "llmq.json").read_text())
    qc = meta["quantization_config"]
    assert qc["requantized"] is True and qc["source_ftype"] == "Q8_0" and qc["source_tensor_types"]["Q8_0"] > 0
    assert meta["size_bytes"]["before"] == q8.stat().st_size  # the source file, not a dequantized copy
    assert _fields(out / "tiny-sp-Q4_K_M.gguf")["tokenizer.ggml.scores"] == _fields(f32)["tokenizer.ggml.scores"]
    card = render_card(out, lookup_license=False)
    assert "Requantized from" in card and "`tiny-sp.Q8_0.gguf` (Q8_0)" in card
    assert "both rounding errors" in card and "dequantized from the GGUF file" not in card


def test_an_importance_matrix_for_a_gguf_source(sp_gguf, tmp_path, monkeypatch):
    """With calibration, the importance matrix comes from the source dequantized by transformers (its
    config names the architecture the converter's name map needs, cold cache or not), and llama.cpp
    still requantizes the file itself: tokenizer kept, bits changed by the matrix."""
    import llmq

    _, f32 = sp_gguf
    monkeypatch.setenv("LLMQ_CACHE", str(tmp_path / "cache"))
    txt = tmp_path / "calib.txt"
    txt.write_text("Calibration text for the importance matrix, repeated often. " * 80)
    out = llmq.quantize(str(f32), "gguf-q4_k_m", calibration=str(txt), n_samples=2, seqlen=32).save(tmp_path / "im")
    plain = llmq.quantize(str(f32), "gguf-q4_k_m").save(tmp_path / "plain")
    qc = json.loads((out / "llmq.json").read_text())["quantization_config"]
    assert qc["imatrix"] is True and qc["calibration"]["tensors"] == 14 and qc["source_format"] == "gguf"
    f, g = out / "tiny-sp-Q4_K_M.gguf", plain / "tiny-sp-Q4_K_M.gguf"
    assert _fields(f)["tokenizer.ggml.scores"] == _fields(f32)["tokenizer.ggml.scores"]
    assert f.read_bytes() != g.read_bytes() and G.tensor_types(f) == G.tensor_types(g)


def test_eval_and_compare_of_the_output_on_both_runtimes(sp_gguf, tmp_path, monkeypatch):
    """``run --eval`` scores the requantized file against its .gguf source on llama.cpp, both sides; the
    same pair scores on transformers (dequantized) without llama-cpp-python. No tokenizer traceback."""
    import math

    from llmq.backends.gguf import plugin as P
    from llmq.eval import compare
    from llmq.pipeline.run import run

    _, f32 = sp_gguf
    monkeypatch.setenv("LLMQ_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "run"
    assert run(str(f32), "gguf-q4_0", output=out, sample=False, evaluate=True, limit=2, eval_seqlen=128).code == 0
    rep = json.loads((out / "report.json").read_text())
    assert rep["original"]["path"] == str(f32)  # the file llama.cpp requantized, not a dequantized folder
    assert rep["protocol"]["runtime"] == "llama.cpp" == rep["original"]["runtime"] == rep["quantized"]["runtime"]
    assert rep["quantized"]["kld"]["mean"] > 0 and "- runtime: llama.cpp" in (out / "report.md").read_text()

    monkeypatch.setattr(P, "llama_cpp_installed", lambda: False)
    r = compare(str(f32), str(out), ppl="wikitext2", limit=2, seqlen=64, speed=False, progress=False)
    assert r["protocol"]["runtime"] == "transformers"
    assert r["original"]["runtime"] == r["quantized"]["runtime"] == "transformers (dequantized GGUF)"
    assert math.isfinite(r["quantized"]["perplexity"]["value"]) and r["quantized"]["kld"]["mean"] > 0
