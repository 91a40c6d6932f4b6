"""The scheme plugin interface: everything llmq knows about one quantization method lives in one
subclass of ``Backend`` (one file under ``llmq/backends/``), registered with one line in
``llmq/schemes.py``.

A plugin declares, as class attributes: its pip requirements, the schemes it offers (``schemes``:
name, config class, defaults, bits, description and the advisor's role/precision), the
``quant_method`` values of ``config.json`` it loads, its runtime, and whether the model
``quantize`` returns runs as a plain transformers model. Its methods quantize, save, say whether a
saved folder is complete, recognise and load an output, estimate the size for a parameter profile,
and give the model card's facts. Environment checks run before any weight loads, as in
transformers' ``HfQuantizer.validate_environment``.

Plugin modules import torch and their backend package inside methods only, so listing schemes
stays fast.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Mapping

from llmq.errors import ConfigError, MissingDependencyError, ModelNotFoundError
from llmq.backends.exports import check_export_installed, export_format, export_versions
from llmq.backends.layers import block_shapes, model_type, weight_layer_types, weight_shapes  # noqa: F401

_DTYPES = {"float32": "float32", "float16": "float16", "bfloat16": "bfloat16"}


def torch_dtype(name: str):
    import torch

    return getattr(torch, _DTYPES[name])


def package_version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


@dataclass(frozen=True)
class Scheme:
    """A name users type, bound to a plugin and a default config, with its place in the advisor."""

    name: str
    backend: str  # the plugin's registry name
    config_cls: type
    defaults: Mapping[str, Any] = field(default_factory=dict)
    bits: float = 16
    description: str = ""
    #: advisor: "16" | "8" | "4" | "3" (what the rule of thumb's bands are looked up by)
    precision: str = ""
    #: advisor: what the scheme is for, one line
    role: str = ""
    #: advisor: runs on CPU, but its fast kernels are GPU kernels
    gpu_only_kernels: bool = False
    #: advisor: preference in each decision-tree situation ("cpu", "gpu_fits", "gpu_8bit",
    #: "gpu_4bit"), lower first; a situation not named ranks the scheme after every named one
    tree_rank: Mapping[str, float] = field(default_factory=dict)
    #: how vLLM serves this scheme's folders (``llmq.advisor.serving``): "w8a8-fp8", "w8a8-int8",
    #: "w4a16", "w8a16", "16-bit", or "" (no fast vLLM path)
    serve_as: str = ""

    def config(self, **overrides: Any) -> Any:
        """The scheme's default config with the user's overrides applied and validated; a
        ``format`` override first applies the defaults that format changes (``format_defaults``)."""
        fmt_defaults = getattr(self.config_cls, "format_defaults", {}).get(overrides.get("format"), {})
        return self.config_cls(**{**self.defaults, **fmt_defaults}).with_overrides(**overrides)

    def backend_cls(self) -> type["Backend"]:
        """The plugin class that declared this scheme (bound by ``Backend.__init_subclass__``)."""
        plugin = self.__dict__.get("_plugin")
        if plugin is None:
            raise ConfigError(f"Scheme {self.name!r} is not declared in any plugin's ``schemes``.")
        return plugin


@dataclass
class CardFacts:
    """What a model card says about how to use a folder of this method."""

    packages: str  # what ``pip install`` needs to load it
    python: str  # a runnable usage snippet
    tags: list[str]  # Hub tags beyond "llmq", bits and "quantized"
    hardware: str | None = None  # the method's hardware limits, one paragraph
    note: str | None = None  # a caveat under the snippet
    serve: str | None = None  # a serving command (vLLM), None when it cannot serve the folder
    serve_note: str | None = None
    library_name: str = "transformers"  # the card metadata's library_name (e.g. "gguf" for llama.cpp files)
    rows: list[tuple[str, str]] = field(default_factory=list)  # extra rows of the card's Quantization table
    usage_title: str = "transformers"  # the heading over ``packages``/``python``
    serve_title: str = "vLLM"  # the heading over ``serve``


def transformers_snippet(repo: str) -> str:
    return (
        "from transformers import AutoModelForCausalLM, AutoTokenizer\n\n"
        f'model_id = "{repo}"\n'
        "tokenizer = AutoTokenizer.from_pretrained(model_id)\n"
        'model = AutoModelForCausalLM.from_pretrained(model_id, dtype="auto", device_map="auto")\n'
        'inputs = tokenizer("The capital of France is", return_tensors="pt").to(model.device)\n'
        "out = model.generate(**inputs, max_new_tokens=20)\n"
        "print(tokenizer.decode(out[0], skip_special_tokens=True))"
    )


VLLM_NOTE = "vLLM needs a GPU. llmq's own tests do not run vLLM."

#: ``llmq.verify``'s KL bound (nats/token) per scheme precision band, for plugins that declare none
#: (``Backend.verify_kld``): at least 3x the largest KL of the band's schemes on the demo, at most a
#: third of garbage's (uniform logits: 7.68), both from ``OMP_NUM_THREADS=1 python
#: scripts/bench_verify.py --parts demo,garbage --update`` (eval/bench_verify.json). Largest measured:
#: bf16 0.0015, int8-dynamic 0.054, bnb-fp4 0.60, gptq-int3 0.70
VERIFY_KLD = {"16": 0.01, "8": 0.2, "4": 2.0, "3": 2.5}


class Backend:
    """A scheme plugin. Subclasses override the class attributes and whichever methods differ."""

    name: ClassVar[str] = "base"
    #: ``(import name, pip distribution)`` pairs the backend needs
    requires: ClassVar[tuple[tuple[str, str], ...]] = ()
    #: the ``llmq[extra]`` that installs them
    extra: ClassVar[str | None] = None
    needs_calibration: ClassVar[bool] = False
    #: quantize() fine-tunes (QAT): ``--scheme auto`` tries it only with ``allow_training``
    needs_training: ClassVar[bool] = False
    #: the schemes this plugin offers
    schemes: ClassVar[tuple[Scheme, ...]] = ()
    #: ``quantization_config.quant_method`` values (config.json) whose folders this plugin loads
    quant_methods: ClassVar[tuple[str, ...]] = ()
    #: what runs the output: "transformers", or e.g. "llama.cpp" for a plugin that writes .gguf files
    runtime: ClassVar[str] = "transformers"
    #: whether the model ``quantize`` returns can be run right away as a transformers model; if
    #: not, ``QuantizedModel.hf_model`` runs it from the saved folder through ``load``
    runs_in_memory: ClassVar[bool] = True
    #: the files that hold the weights in a saved output (its "size after" in ``llmq.json``)
    weight_patterns: ClassVar[tuple[str, ...]] = ("*.safetensors",)
    #: the context the evaluators use for an output without a config.json (its runtime's, e.g. a
    #: .gguf on llama.cpp); None: read from config.json
    eval_context: ClassVar[int | None] = None
    #: the layer classes whose weight matrices ``quantize`` converts ("Linear": ``torch.nn.Linear``
    #: and its subclasses; "Conv1D": transformers' GPT-2-style ``Conv1D``); None: every weight (a
    #: dtype cast, a converter that maps each architecture itself). A model whose decoder holds its
    #: matrices in other layers is refused before any weight loads (``unsupported``), instead of
    #: being saved with those layers silently left in full precision
    layer_types: ClassVar[tuple[str, ...] | None] = ("Linear",)
    #: why other layer types are refused, when there is more to say than ``layer_types``
    layer_types_note: ClassVar[str] = ""
    #: the largest mean KL divergence (nats/token, original || output, ``llmq.verify``'s text) an
    #: output of this plugin may show before ``save`` rejects it: a number, {scheme name: number},
    #: or None for the default of the scheme's precision band (``VERIFY_KLD``); see ``verify_bound``
    verify_kld: ClassVar[float | Mapping[str, float] | None] = None
    #: checkpoint formats ``export`` writes besides the plugin's own, picked by the config's
    #: ``format``; each is the ``quant_method`` of the plugin that loads such folders
    #: (``"compressed-tensors"``: ``llmq.backends.compressed``)
    exports: ClassVar[tuple[str, ...]] = ()

    def __init_subclass__(cls, **kwargs: Any) -> None:
        """Bind each scheme a plugin declares to the plugin class, so ``Scheme.backend_cls`` needs no
        registry lookup (the registry, ``llmq.schemes``, sits above the plugins and imports them)."""
        super().__init_subclass__(**kwargs)
        for s in cls.__dict__.get("schemes", ()):
            object.__setattr__(s, "_plugin", cls)

    def __init__(self, scheme: Scheme, config: Any, options: Mapping[str, Any] | None = None):
        self.scheme = scheme
        self.config = config
        #: run-time settings that are not part of the result (e.g. QAT's checkpoint folder, resume)
        self.options = dict(options or {})
        check_export_installed(config)  # format="compressed-tensors" needs compressed-tensors

    # -- checks, all before any weights load -------------------------------------------------
    @classmethod
    def missing_packages(cls) -> list[str]:
        return [dist for mod, dist in cls.requires if importlib.util.find_spec(mod) is None]

    @classmethod
    def validate_environment(cls, scheme_name: str, device: str) -> None:
        missing = cls.missing_packages()
        if missing:
            raise MissingDependencyError(f"Scheme {scheme_name!r}", missing, cls.extra or "all")
        if device.startswith("cuda"):
            import torch

            if not torch.cuda.is_available():
                raise ConfigError("--device cuda was asked for but torch sees no CUDA GPU; use --device cpu.")

    def unsupported(self, config: Any, *, trust_remote_code: bool = False) -> str | None:
        """Why this scheme (with its config) cannot quantize a model of ``config``, in one line naming
        the model type; None when it can. Config alone, no weights: ``validate_model`` raises it and
        ``llmq schemes --model`` lists it. Default: the decoder's weight layers must be ``layer_types``;
        plugins add their own limits (architectures a converter knows, versions that crash on one)."""
        if self.layer_types is None:
            return None
        found = weight_layer_types(config, trust_remote_code=trust_remote_code)
        other = {t: names for t, names in found.items() if t not in self.layer_types}
        if not other:
            return None
        kinds = ", ".join(f"{t} layers ({names[0]}{', ...' if len(names) > 1 else ''})" for t, names in other.items())
        why = f" ({self.layer_types_note})" if self.layer_types_note else ", so they would stay in full precision"
        return (f"{self.scheme.name} cannot quantize {model_type(config)}'s {kinds}: it converts "
                f"{'/'.join(self.layer_types)} layers only{why}")

    def misfit(self, config: Any, *, trust_remote_code: bool = False) -> str | None:
        """Why this scheme's settings do not fit a model of ``config`` although the scheme could
        quantize it (e.g. a group size that does not divide its layers: the fix is an option, not
        another scheme); None when they fit. Config alone, like ``unsupported``."""
        return None

    def validate_model(self, source: Any) -> None:
        """Config-only checks before any weight loads, each one line: ``unsupported`` (layer types,
        architectures) as ``UnsupportedModelError``, then ``misfit`` (settings) as ``ConfigError``."""
        from llmq.errors import UnsupportedModelError

        cfg, trc = source.config(), source.trust_remote_code
        reason = self.unsupported(cfg, trust_remote_code=trc)
        if reason:
            raise UnsupportedModelError(reason)
        problem = self.misfit(cfg, trust_remote_code=trc)
        if problem:
            raise ConfigError(problem)

    def source_file(self, source: Any) -> Path | None:
        """A source file this plugin quantizes as it is, handed to ``quantize`` instead of the
        safetensors folder (a ``.gguf`` that llama.cpp requantizes, keeping its metadata and tokenizer);
        None (the default): the folder, dequantized or downloaded as needed."""
        return None

    def versions(self) -> dict[str, str | None]:
        return {**{dist: package_version(dist) for _, dist in self.requires}, **export_versions(self.config)}

    # -- quantize and save ------------------------------------------------------------------
    def quantize(self, model_dir: Path, calibration: Any, device: str) -> Any:
        """Quantize ``model_dir`` (a safetensors folder, or what ``source_file`` named)."""
        raise NotImplementedError

    def write(self, model: Any, tokenizer: Any, out: Path) -> dict[str, Any]:
        """Write the output in the config's ``format``: ``export`` for one of ``exports``, else the
        plugin's own ``save``. Returns the llmq.json entries an export decides (its
        ``quantization_config``, serving facts). After an export the saved folder is what runs (its
        format's plugin loads it), so the sample and the evaluation measure the exported checkpoint."""
        fmt = export_format(self.config)
        if fmt in self.exports:
            written = self.export(model, tokenizer, out, fmt)
            self.runs_in_memory = False
            return written
        self.save(model, tokenizer, out)
        return {}

    def export(self, model: Any, tokenizer: Any, out: Path, fmt: str) -> dict[str, Any]:
        """Write ``model`` (what ``quantize`` returned) into ``out`` in format ``fmt`` (one of
        ``exports``): the same quantized weights in that format's layout. Returns llmq.json entries
        (at least the ``quantization_config`` written into config.json)."""
        raise NotImplementedError(f"plugin {self.name!r} exports no {fmt!r} format")

    def save(self, model: Any, tokenizer: Any, out: Path) -> None:
        """Write the complete output into ``out`` (an empty temporary folder; ``llmq.json`` is added
        after). Default: the files of an output written while quantizing
        (``llmq.streaming.WrittenOutput``, hard-linked), or transformers ``save_pretrained`` as
        safetensors; plus the tokenizer."""
        from llmq.streaming import WrittenOutput

        if isinstance(model, WrittenOutput):
            model.place(out)
            tokenizer.save_pretrained(out)
            return
        model.save_pretrained(out, safe_serialization=True)
        tokenizer.save_pretrained(out)
        for f in out.glob("*.bin"):
            f.unlink()

    @classmethod
    def missing_files(cls, folder: Path) -> list[str]:
        """What a complete output of this plugin lacks in ``folder`` (empty: complete)."""
        missing = []
        if not (folder / "config.json").is_file():
            missing.append("config.json")
        if not list(folder.glob("*.safetensors")):
            missing.append(".safetensors weights")
        return missing

    @classmethod
    def verify_output(cls, folder: Path, what: str) -> None:
        """Refuse a saved output with NaN/Inf tensors (e.g. an fp16 scale that overflowed to inf) and
        make its bytes reproducible, before it is renamed into place. Default: every ``*.safetensors``
        (one tensor at a time), then their ``__metadata__`` keys sorted (same input and seed give
        byte-identical files). A plugin writing another format checks its own."""
        from llmq.outdir import canonicalize_folder
        from llmq.safety import check_finite_safetensors

        check_finite_safetensors(folder, what)
        canonicalize_folder(folder)

    @classmethod
    def verify_bound(cls, scheme: Scheme) -> float:
        """The KL bound ``llmq.verify`` holds an output of ``scheme`` to: the plugin's ``verify_kld``,
        else ``VERIFY_KLD`` of the scheme's precision band."""
        v = cls.verify_kld
        if isinstance(v, Mapping):
            v = v.get(scheme.name)
        return float(v) if v is not None else VERIFY_KLD[scheme.precision or "4"]

    @classmethod
    def verify_reference(cls, source_dir: Path, device: str, *, trust_remote_code: bool = False
                         ) -> tuple[Any, str, Any]:
        """``(model, runtime name, cleanup or None)``: the original at ``source_dir`` for ``llmq.verify``
        to compare this plugin's outputs with. Default: transformers, in the checkpoint's dtype, except
        float32 for float16 checkpoints on CPU (slow and overflow-prone there). The GGUF plugin keeps
        this default: its outputs run on llama.cpp, their original on transformers, which on the demo
        gives the logits an f32 GGUF of the original gives on llama.cpp within KL 1e-6
        (scripts/bench_verify.py), and checks llama.cpp's implementation of the architecture too."""
        import torch
        from transformers import AutoModelForCausalLM

        from llmq.models import read_json

        dtype: Any = "auto"
        if device == "cpu":
            cfg = read_json(source_dir / "config.json")
            saved = cfg.get("dtype") or cfg.get("torch_dtype") or (cfg.get("text_config") or {}).get("dtype")
            dtype = torch.bfloat16 if saved == "bfloat16" else torch.float32
        model = AutoModelForCausalLM.from_pretrained(source_dir, dtype=dtype, device_map=device,
                                                     trust_remote_code=trust_remote_code).eval()
        return model, f"transformers ({str(model.dtype).removeprefix('torch.')})", None

    def extra_metadata(self) -> dict[str, Any]:
        """Entries ``quantize`` recorded for ``llmq.json`` beyond the common ones (e.g. QAT's
        ``training`` block); merged last."""
        return {}

    def quantization_config(self, model: Any) -> dict | None:
        from llmq.streaming import WrittenOutput

        if isinstance(model, WrittenOutput):
            return model.quantization_config
        qc = getattr(model.config, "quantization_config", None)
        if qc is None:
            return None
        return qc if isinstance(qc, dict) else qc.to_dict()

    # -- load ---------------------------------------------------------------------------------
    @classmethod
    def recognises(cls, path: Path) -> bool:
        """True for an output that is not a transformers folder but this plugin's (e.g. a .gguf
        file); transformers folders are matched by ``quant_methods`` instead."""
        return False

    @classmethod
    def load_kwargs(cls, path: Path, quantization_config: dict, device: str, kernel: str | None) -> dict[str, Any]:
        """Checks and extra ``from_pretrained`` keywords for a folder of one of ``quant_methods``."""
        missing = cls.missing_packages()
        if missing:
            method = quantization_config.get("quant_method") or cls.name
            raise MissingDependencyError(f"Loading a {method} model", missing, cls.extra or "all")
        if kernel is not None:
            raise ConfigError(f"kernel= applies to GPTQ/AWQ folders; {path} is "
                              f"{quantization_config.get('quant_method') or 'not quantized'}.")
        return {}

    @classmethod
    def load_dtype(cls, quantization_config: dict, device: str, dtype: Any) -> Any:
        """The dtype ``load`` passes to ``from_pretrained``: ``dtype`` as asked, unless the
        plugin's kernels need another one for ``"auto"``."""
        return dtype

    @classmethod
    def load_tokenizer(cls, path: Path, *, trust_remote_code: bool = False) -> Any:
        """The tokenizer of an output of this plugin (what the evaluators tokenize with); default:
        transformers ``AutoTokenizer`` from the folder (a folder without a usable one is one line)."""
        from transformers import AutoTokenizer

        try:
            return AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
        except (OSError, ValueError) as e:
            if isinstance(e, OSError) and e.errno is not None:
                raise  # the file system's error (permission, ...): the CLI says it in one line
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise ModelNotFoundError(f"{path} has no usable tokenizer ({first}); copy the original model's "
                                     "tokenizer files into it.") from None

    @classmethod
    def load(cls, path: Path, *, device: str, dtype: Any = "auto", kernel: str | None = None,
             trust_remote_code: bool = False) -> tuple[Any, Any]:
        """``(model, tokenizer)`` for an output of this plugin; default: plain transformers, after
        checking every safetensors header (a truncated or garbage file is one line, not a
        traceback). ``trust_remote_code`` is the user's opt-in to the folder's own Python
        (``llmq.load`` has refused such a folder already when it is False)."""
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from llmq.models import read_json
        from llmq.weightfiles import check_safetensors_folder

        check_safetensors_folder(path, required=True)  # never torch.load a pytorch_model.bin
        qc = read_json(path / "config.json").get("quantization_config") or {}
        kwargs = cls.load_kwargs(path, qc, device, kernel)
        model = AutoModelForCausalLM.from_pretrained(path, device_map=device, dtype=cls.load_dtype(qc, device, dtype),
                                                     trust_remote_code=trust_remote_code, **kwargs)
        model.eval()
        return model, AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)

    @classmethod
    def eval_runtimes(cls) -> tuple[str, ...]:
        """The runtimes an output of this plugin can be scored on, preferred first (``load`` uses the
        first); a comparison scores both models on one runtime they share."""
        return (cls.runtime,)

    @classmethod
    def load_on(cls, path: Path, runtime: str, *, device: str) -> tuple[Any, Any]:
        """``(model, tokenizer)`` on one of ``eval_runtimes`` (``load`` takes the first; a .gguf can also
        be dequantized into transformers); the model's ``llmq_runtime`` says which. Default: none but
        ``load``'s."""
        raise ConfigError(f"{cls.name} outputs run on {' or '.join(cls.eval_runtimes())}, not {runtime}.")

    @classmethod
    def generate(cls, model: Any, tokenizer: Any, prompt: str, max_new_tokens: int = 24) -> str:
        """Greedy continuation of ``prompt`` with a model ``load`` returned (the sample ``llmq run``
        prints); default: transformers ``generate``."""
        import torch

        enc = tokenizer(prompt, return_tensors="pt").to(next(model.parameters()).device)
        with torch.inference_mode():
            out = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False,
                                 pad_token_id=tokenizer.pad_token_id or tokenizer.eos_token_id)
        return tokenizer.decode(out[0, enc["input_ids"].shape[1]:], skip_special_tokens=True)

    @classmethod
    def bench_runner(cls, path: Path, *, device: str, threads: int | None) -> Any | None:
        """The ``llmq.bench`` runner for an output that transformers does not run (a ``.gguf`` on
        llama.cpp); None: the torch runner (``llmq.load`` + ``generate``) benches it."""
        return None

    # -- what the advisor and the card need ---------------------------------------------------
    @classmethod
    def cost_key(cls, scheme: Scheme, config: Any) -> str:
        """The name ``scripts/bench_scale.py`` measured this job's cost under (``llmq/scale_costs.json``)."""
        return scheme.name

    @classmethod
    def cost_features(cls, profile: Any, scheme: Scheme, config: Any) -> Any:
        """``llmq.cost.CostFeatures`` of quantizing ``profile``: what ``llmq.cost.project`` turns
        into peak RAM and wall time. Default: a plugin that converts block by block
        (``llmq.streaming``) at ``config.dtype``, time growing with the parameters."""
        from llmq.cost import streamed
        from llmq.sizing import BYTES

        dtype = getattr(config, "dtype", "float32")
        return streamed(profile, BYTES.get(dtype, 4), cls.estimate(profile, scheme, config, "cpu").bytes)


    @classmethod
    def estimate(cls, profile: Any, scheme: Scheme, config: Any, device: str) -> Any:
        """The ``llmq.sizing.SizeEstimate`` of what ``save`` writes for ``profile``."""
        raise NotImplementedError(f"plugin {cls.name!r} has no size estimate")

    @classmethod
    def card_facts(cls, meta: dict, repo: str) -> CardFacts:
        """Packages, usage snippet, hardware limits and tags for the card of a folder (``meta`` is
        its ``llmq.json``); ``repo`` is the Hub id or path the snippet loads."""
        raise NotImplementedError(f"plugin {cls.name!r} has no model-card facts")
