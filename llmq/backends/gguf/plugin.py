"""The GGUF scheme plugin: llama.cpp's formats as llmq schemes (``gguf-q8_0`` ... ``gguf-q4_0``).
The converter + ``llama_model_quantize`` (``llmq.backends.gguf.quantizer``) write one ``.gguf``;
llama.cpp (``llmq.backends.gguf.runtime``, through llama-cpp-python) runs and scores it. This module
holds the size estimate, the schemes' advisor roles, loading and the model card's facts."""

from __future__ import annotations

import importlib.util
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from llmq.backends.base import Backend as _Backend
from llmq.backends.gguf.quantizer import (EXTRA, REQUIRES, SCHEMES, GGUFConfig, build, check_model,
                                          write_modelfile)
from llmq.errors import ConfigError, LlmqError, MissingDependencyError


# ---------------------------------------------------------------------------------------------
# size estimate from a parameter profile
# ---------------------------------------------------------------------------------------------
#: (block elements, block bytes) of ggml types (ggml-common.h)
BLOCKS = {"F32": (1, 4), "F16": (1, 2), "BF16": (1, 2), "Q8_0": (32, 34), "Q4_0": (32, 18), "Q5_0": (32, 22),
          "Q5_1": (32, 24), "Q4_1": (32, 20), "Q4_K": (256, 144), "Q5_K": (256, 176), "Q6_K": (256, 210)}
_FALLBACK = {"Q4_K": "Q5_0", "Q5_K": "Q5_1", "Q6_K": "Q8_0"}  # llama.cpp's fallback for ne[0] % 256 != 0
_BASE = {"Q8_0": "Q8_0", "Q6_K": "Q6_K", "Q5_K_M": "Q5_K", "Q4_K_M": "Q4_K", "Q4_0": "Q4_0"}


def _tensor_bytes(t: str, rows: int, cols: int) -> tuple[int, str]:
    if t in _FALLBACK and cols % 256:
        t = _FALLBACK[t]
    n, b = BLOCKS[t]
    return rows * ((cols + n - 1) // n) * b, t


def _use_more_bits(i: int, n: int) -> bool:
    return i < n // 8 or i >= 7 * n // 8 or (i - n // 8) % 3 == 2


def estimate_size(profile: Any, scheme: str) -> Any:
    """Bytes of the GGUF ``scheme`` writes, from the profile alone: llama.cpp's main per-tensor rules
    (output/tied embedding in Q6_K for K-quants and Q8_0 stays Q8_0; Q4_K_M/Q5_K_M give half the
    ``attn_v``/``ffn_down`` layers Q6_K; fallbacks for rows not divisible by 256; norms F32). An
    estimate: ``scripts/bench_gguf.py`` checks it against real files."""
    from llmq.sizing import SizeEstimate

    ftype = SCHEMES[scheme]
    base = _BASE[ftype]
    total = 0
    q_params = 0
    bd: dict[str, int] = {}

    def add(t: str, rows: int, cols: int) -> None:
        nonlocal total
        b, used = _tensor_bytes(t, rows, cols)
        total += b
        bd[used] = bd.get(used, 0) + b

    n = max(profile.layers, 1)
    for lin in profile.linears:
        if not lin.in_layers:
            continue
        t = base
        try:
            layer = int(lin.name.split(".layers.")[1].split(".")[0]) if ".layers." in lin.name else 0
        except ValueError:
            layer = 0
        short = lin.name.rsplit(".", 1)[-1]
        if ftype in ("Q4_K_M", "Q5_K_M") and short in ("v_proj", "down_proj") and _use_more_bits(layer, n):
            t = "Q6_K"
        add(t, lin.out_features, lin.in_features)
        q_params += lin.numel
    hidden = profile.hidden or 1
    # output (or the tied embedding that doubles as output): Q8_0 when rows do not fit the base
    # type's blocks or the base is Q8_0, else Q6_K; an untied token_embd keeps the base type
    out_type = "Q8_0" if base == "Q8_0" or hidden % BLOCKS[base][0] else "Q6_K"
    add(out_type, profile.vocab, hidden)
    if not profile.tied:
        add(base, profile.vocab, hidden)
    other = max(profile.parameters - q_params - profile.embedding_params - profile.lm_head_params, 0)
    total += other * 4
    bd["F32 (norms)"] = other * 4
    # metadata: token strings, scores/types and BPE merges (measured 36 bytes per token on SmolLM2's 49k vocab)
    header = 36 * profile.vocab + 16384
    total += header
    bd["metadata (approx.)"] = header
    return SizeEstimate(scheme, ftype, int(total), q_params, other, "float32",
                        8 * total / max(profile.parameters, 1), bd)


# ---------------------------------------------------------------------------------------------
# the scheme plugin
# ---------------------------------------------------------------------------------------------
_ROLE = ("llama.cpp file for CPU/edge runtimes (llama.cpp, Ollama, LM Studio); scored on llama.cpp; "
         "not a transformers/vLLM GPU serving format")
#: advisor ranks: on CPU each GGUF type sits right after the transformers scheme of its precision
#: (int8-dynamic 0, bf16 1, bnb-int8 2, bnb-nf4 6, bnb-fp4 7); with a GPU, after every GPU format
#: (llmq[gguf] builds llama.cpp for CPU). Which one wins on CPU is measured by ``--scheme auto``.
_GPU_LAST = {"gpu_fits": 20, "gpu_8bit": 20, "gpu_4bit": 20}


def _scheme(name: str, bits: float, precision: str, cpu: float, what: str) -> Any:
    from llmq.backends.base import Scheme

    ftype = SCHEMES[name]
    return Scheme(name, "gguf", GGUFConfig, {"ftype": ftype}, bits,
                  f"llama.cpp {ftype} GGUF ({what}); optional importance matrix from calibration",
                  precision=precision, role=f"{what}: {_ROLE}", gpu_only_kernels=False,
                  tree_rank={"cpu": cpu, **{k: v + cpu / 10 for k, v in _GPU_LAST.items()}})


def _checked_gguf(path: Path) -> Path:
    """The .gguf of ``path`` (a file or an output folder), checked complete before anything reads it."""
    from llmq.weightfiles import check_gguf_file

    f = _gguf_in(path)
    if f is None:
        raise LlmqError(f"{path} is not a .gguf file or a folder holding one.")
    check_gguf_file(f)
    return f


def _gguf_in(path: Path) -> Path | None:
    """The .gguf ``path`` is, or the one .gguf of an output folder without config.json."""
    path = Path(path)
    if path.is_file():
        return path if path.suffix == ".gguf" else None
    if path.is_dir() and not (path / "config.json").is_file():
        files = sorted(path.glob("*.gguf"))
        if len(files) == 1:
            return files[0]
    return None


def llama_cpp_installed() -> bool:
    return importlib.util.find_spec("llama_cpp") is not None


@dataclass
class GGUFArtifact:
    """What ``GGUFBackend.quantize`` returns: the quantized file in a scratch folder, and its record."""

    path: Path
    record: dict[str, Any]


def _source_rows(qc: dict) -> list[tuple[str, str]]:
    """The card's row for a file llama.cpp requantized from a ``.gguf`` source."""
    if qc.get("source_format") != "gguf":
        return []
    src = f"`{qc.get('source_file')}` ({qc.get('source_ftype') or 'type not recorded'})"
    if qc.get("requantized"):
        return [("Requantized from", f"{src} by llama.cpp (`allow_requantize`): the source's tensors were already "
                                     "quantized, so both rounding errors add up; an F32/F16 source gives better quality")]
    return [("Quantized from", f"{src} by llama.cpp, metadata and tokenizer kept")]


def output_name(model_dir: Path) -> str:
    """The model's name for ``<name>-<FTYPE>.gguf``: a ``.gguf`` source's or a dequantized GGUF cache
    folder's source stem (without llmq's cache hash and the source's own type), a Hub snapshot's repo
    name, else the folder name."""
    model_dir = Path(model_dir)
    if model_dir.suffix == ".gguf":  # a .gguf source: its stem, without the source's own type
        return model_dir.stem.split(".")[0] or model_dir.stem
    if model_dir.parent.name == "snapshots":
        return model_dir.parent.parent.name.split("--")[-1]
    from llmq.models import cache_dir

    if model_dir.parent == cache_dir() / "gguf":
        stem = model_dir.name.rsplit("-", 1)[0]
        return stem.split(".")[0] or stem
    return model_dir.name


class GGUFBackend(_Backend):
    """llama.cpp's formats: the converter + ``llama_model_quantize`` write one ``.gguf``; llama.cpp
    (llama-cpp-python) runs and scores it. The loader falls back to transformers (dequantized) only
    when llama-cpp-python is not installed, and the model it returns says which runtime it is."""

    name = "gguf"
    requires = REQUIRES
    extra = EXTRA
    needs_calibration = False  # optional: an importance matrix when calibration= is given
    quant_methods = ("gguf",)
    runtime = "llama.cpp"
    runs_in_memory = False
    weight_patterns = ("*.gguf",)
    #: the evaluator's longest window on this runtime (``LlamaCppLM``'s context)
    eval_context = 2048
    schemes = (
        _scheme("gguf-q8_0", 8, "8", 0.6, "8-bit Q8_0"),
        _scheme("gguf-q6_k", 6, "8", 1.5, "6-bit K-quant Q6_K"),
        _scheme("gguf-q5_k_m", 5, "4", 5.5, "5-bit K-quant mix Q5_K_M"),
        _scheme("gguf-q4_k_m", 4, "4", 5.6, "4-bit K-quant mix Q4_K_M"),
        _scheme("gguf-q4_0", 4, "4", 7.5, "4-bit scale-only Q4_0"),
    )

    #: llama.cpp's converter maps each architecture's tensors itself (Conv1D included)
    layer_types = None

    def unsupported(self, config: Any, *, trust_remote_code: bool = False) -> str | None:
        """The converter must know the architecture: checked on the config alone, before weights load."""
        try:
            self.check_config(config)
        except ConfigError as e:
            return str(e)
        return None

    def validate_model(self, source: Any) -> None:
        """The converter must know the architecture: checked on the config alone, before weights load.
        A ``.gguf`` source needs no converter (llama.cpp requantizes it), unless an importance matrix
        is asked for (it maps transformers' module names to the file's through the converter)."""
        if self.source_file(source) is not None and getattr(self.config, "calibration", None) is None:
            return
        self.check_config(source.config())  # environment errors (an old gguf-py) as they are

    def check_config(self, config: Any) -> str:
        from llmq.owners import scratch_dir

        with scratch_dir("gguf-cfg") as d:
            config.to_json_file(str(Path(d) / "config.json"))
            return check_model(Path(d), self.scheme.name)

    def source_file(self, source: Any) -> Path | None:
        """A ``.gguf`` source stays GGUF: llama.cpp requantizes the file itself, its metadata and
        tokenizer kept (``llmq.backends.gguf.requantize``)."""
        return Path(source.path) if source.kind == "gguf" and source.path is not None else None

    def quantize(self, model_dir: Path, calibration: Any, device: str) -> GGUFArtifact:
        """Convert + (imatrix on the fp32 transformers model, CPU) + quantize into a scratch folder
        removed at exit (after a ``kill -9``, by the next llmq run that makes one: ``llmq.owners``), or
        requantize a ``.gguf`` source; ``save`` copies the file out."""
        import atexit

        from llmq.owners import make_scratch, remove_entry

        work = make_scratch("gguf")
        atexit.register(remove_entry, work)
        name = f"{output_name(model_dir)}-{self.config.ftype}"
        if Path(model_dir).suffix == ".gguf" and Path(model_dir).is_file():
            from llmq.backends.gguf.requantize import requantize

            path, record = requantize(Path(model_dir), work, self.config, scheme=self.scheme.name, name=name,
                                      calibration=calibration)
        else:
            path, record = build(model_dir, work, self.config, scheme=self.scheme.name, name=name,
                                 calibration=calibration)
        return GGUFArtifact(path, record)

    def save(self, model: GGUFArtifact, tokenizer: Any, out: Path) -> None:
        shutil.copyfile(model.path, Path(out) / model.path.name)
        write_modelfile(out, model.path.name)

    def quantization_config(self, model: GGUFArtifact) -> dict | None:
        return model.record

    @classmethod
    def missing_files(cls, folder: Path) -> list[str]:
        files = list(Path(folder).glob("*.gguf"))
        missing = [] if len(files) == 1 else [f"one .gguf file (found {len(files)})"]
        if not (Path(folder) / "Modelfile").is_file():
            missing.append("Modelfile")
        return missing

    @classmethod
    def verify_output(cls, folder: Path, what: str) -> None:
        """The file parses as GGUF and its float tensors (norms, F32/F16 overrides) are finite."""
        from llmq.backends.gguf.requantize import check_finite_floats

        for f in Path(folder).glob("*.gguf"):
            check_finite_floats(f, what)

    @classmethod
    def recognises(cls, path: Path) -> bool:
        return _gguf_in(path) is not None

    @classmethod
    def load_tokenizer(cls, path: Path, *, trust_remote_code: bool = False) -> Any:
        """The tokenizer stored in the file, read from the file alone (``llmq.gguf_cache.gguf_view``), in
        the class its vocabulary has (``llmq.gguf_cache.gguf_tokenizer``); a ``.gguf`` beside custom code is
        refused like a model folder that ships it."""
        from llmq import safety
        from llmq.models import gguf_tokenizer

        f = _checked_gguf(path)
        safety.refuse_remote_code(f, trust_remote_code)
        return gguf_tokenizer(f)

    @classmethod
    def load(cls, path: Path, *, device: str, dtype: Any = "auto", kernel: str | None = None) -> tuple[Any, Any]:
        """``(LlamaCppLM, tokenizer)`` when llama-cpp-python is installed (the file runs on llama.cpp);
        otherwise transformers' GGUF loader dequantizes it (``runtime`` says which)."""
        f = _checked_gguf(path)
        if kernel is not None:
            raise ConfigError(f"kernel= applies to GPTQ/AWQ folders; {path} is a GGUF file.")
        return cls.load_on(f, cls.eval_runtimes()[0], device=device)

    @classmethod
    def verify_gguf_reference(cls, source: Path, *, trust_remote_code: bool = False) -> tuple[Any, Any]:
        """``(model, tokenizer)`` of a ``.gguf`` source for ``llmq.verify``, on llama.cpp like its output
        (one runtime for both; no dequantized copy); transformers when llama-cpp-python is missing."""
        return cls.load_on(source, cls.eval_runtimes()[0], device="cpu")

    @classmethod
    def eval_runtimes(cls) -> tuple[str, ...]:
        """llama.cpp where llama-cpp-python is installed; transformers (dequantized) always."""
        return ("llama.cpp", "transformers") if llama_cpp_installed() else ("transformers",)

    @classmethod
    def load_on(cls, path: Path, runtime: str, *, device: str) -> tuple[Any, Any]:
        f = _checked_gguf(path)
        if runtime not in cls.eval_runtimes():
            return super().load_on(f, runtime, device=device)
        tok = cls.load_tokenizer(f)
        if runtime == "llama.cpp":
            from llmq.backends.gguf.runtime import LlamaCppLM

            return LlamaCppLM(f), tok
        from transformers import AutoModelForCausalLM

        from llmq.models import gguf_view, strip_quantization_config

        with gguf_view(f) as (d, name):
            model = AutoModelForCausalLM.from_pretrained(d, gguf_file=name, dtype="auto", trust_remote_code=False).eval()
        strip_quantization_config(model)
        model.llmq_runtime = "transformers (dequantized GGUF)"
        return model, tok

    @classmethod
    def generate(cls, model: Any, tokenizer: Any, prompt: str, max_new_tokens: int = 24) -> str:
        if hasattr(model, "complete"):
            return model.complete(prompt, max_new_tokens)
        return super().generate(model, tokenizer, prompt, max_new_tokens)

    @classmethod
    def bench_runner(cls, path: Path, *, device: str, threads: int | None) -> Any:
        """llama.cpp itself (``LlamaCppRunner``): benching a dequantized GGUF on transformers would
        measure the wrong runtime, so a missing llama-cpp-python is an error here, not a fallback."""
        if not llama_cpp_installed():
            raise MissingDependencyError("Benchmarking a .gguf on llama.cpp", ["llama-cpp-python"], EXTRA)
        from llmq.backends.gguf.runtime import LlamaCppRunner

        return LlamaCppRunner(str(_checked_gguf(Path(path))), device=device, threads=threads)

    @classmethod
    def estimate(cls, profile: Any, scheme: Any, config: Any, device: str) -> Any:
        return estimate_size(profile, scheme.name)

    @classmethod
    def cost_key(cls, scheme: Any, config: Any) -> str:
        """With an importance matrix the job is mostly its calibration forward: measured apart."""
        return f"{scheme.name}+imatrix" if config.calibration is not None else scheme.name

    @classmethod
    def cost_features(cls, profile: Any, scheme: Any, config: Any) -> Any:
        """The converter reads tensors lazily and llama.cpp quantizes tensor by tensor: the largest
        block, twice, in fp32; with an importance matrix, one layer in fp32 and every calibration
        token's hidden state, time growing with parameters x tokens (the forward)."""
        from llmq.cost import calibration_bytes, streamed

        if config.calibration is None:
            return streamed(profile, 4, 0)
        tokens = config.n_samples * config.seqlen
        return streamed(profile, 4, 0, calibration_bytes(profile, tokens), work=profile.parameters * tokens)

    @classmethod
    def card_facts(cls, meta: dict, repo: str) -> Any:
        from llmq.backends.base import CardFacts

        qc = meta.get("quantization_config") or {}
        f = qc.get("file") or "model.gguf"
        ftype = qc.get("ftype") or ""
        types = qc.get("tensor_types") or {}
        python = ("from llama_cpp import Llama\n\n"
                  f'llm = Llama.from_pretrained("{repo}", filename="{f}", n_ctx=4096)  # or Llama(model_path="{f}")\n'
                  'print(llm("The capital of France is", max_tokens=20)["choices"][0]["text"])')
        note = (f"llama.cpp CLI: `llama-cli -hf {repo} -p \"The capital of France is\" -n 20` (or `llama-cli -m {f}`). "
                f"transformers can read it too (`from_pretrained(\"{repo}\", gguf_file=\"{f}\")`), dequantized to "
                "full precision, losing the size and speed benefit.")
        hardware = ("llama.cpp's kernels: CPU (x86 AVX2/AVX-512, ARM NEON) and, in GPU builds of llama.cpp, CUDA/Metal/"
                    "Vulkan. Tensor types follow llama.cpp's per-tensor rules, so the file mixes types"
                    + (f" ({', '.join(f'{k}: {v}' for k, v in types.items())} tensors)" if types else "")
                    + "; K-quants need rows divisible by 256 and fall back to other types where they are not.")
        return CardFacts(
            packages="llama-cpp-python", python=python,
            tags=["gguf", "llama.cpp", ftype.lower()] + (["imatrix"] if qc.get("imatrix") else []),
            hardware=hardware, note=note, rows=_source_rows(qc),
            serve=f"ollama create my-model -f Modelfile && ollama run my-model\n# or: llama-server -m {f}",
            serve_note=f"The `Modelfile` next to `{f}` is Ollama's (`FROM ./{f}`); Ollama reads the chat template "
                       "from the GGUF. llmq's own tests run llama-cpp-python, not Ollama.",
            library_name="gguf", usage_title="llama.cpp / llama-cpp-python", serve_title="Ollama / llama-server")
