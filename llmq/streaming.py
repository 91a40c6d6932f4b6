"""Models larger than RAM: a checkpoint is read one tensor at a time (safetensors' lazy
``safe_open``), transformed or run one block at a time (the embeddings, each decoder layer, the
rest), and written into safetensors shards as they fill, so memory is bounded by a layer and a
shard, not by the model.

- :class:`ShardReader` / :class:`ShardWriter`: tensors by name from a folder's shards; tensors out
  into ``model.safetensors`` (one shard) or transformers' ``model-0000i-of-0000n.safetensors`` plus
  ``model.safetensors.index.json``.
- :class:`BlockModel`: a transformers model built on the meta device whose blocks are materialized
  from the shards on demand and dropped after use (tied weights stay tied).
- :func:`stream_folder`: every block materialized, converted by the caller, written, freed.
- :class:`LayerRunner`: calibration samples run through the decoder one layer at a time (the
  inputs of layer 0 are caught the way GPTQ does it, then each layer's outputs feed the next), so
  statistics of a 7B model are gathered with one layer in memory.

A model whose checkpoint names differ from its parameters (transformers renames them on load for
some architectures) raises :class:`NotStreamable` (saying why); callers then load it whole.
"""

from __future__ import annotations

import json
import os
import shutil
import weakref
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

#: the largest shard :class:`ShardWriter` holds before writing it (one shard is in memory at a time)
SHARD_BYTES = 2 * 1024**3
INDEX_FILE = "model.safetensors.index.json"
SINGLE_FILE = "model.safetensors"


class NotStreamable(Exception):
    """This checkpoint cannot be read block by block (the message says why)."""


# -- reading -----------------------------------------------------------------------------------
class ShardReader:
    """Tensors of a folder's ``*.safetensors`` by name, read one at a time through ``safe_open``
    (opened per read: the file's pages are unmapped again, so the process holds the tensors it
    copied, not the checkpoint's mapping)."""

    def __init__(self, folder: str | os.PathLike):
        from safetensors import safe_open

        self.folder = Path(folder)
        self._where: dict[str, Path] = {}
        for f in sorted(self.folder.glob("*.safetensors")):
            with safe_open(str(f), framework="pt") as h:
                for k in h.keys():
                    self._where[k] = f

    def keys(self) -> list[str]:
        return list(self._where)

    def __contains__(self, name: str) -> bool:
        return name in self._where

    def get(self, name: str) -> Any:
        from safetensors import safe_open

        with safe_open(str(self._where[name]), framework="pt") as h:
            return h.get_tensor(name)

# -- writing -----------------------------------------------------------------------------------
class ShardWriter:
    """Tensors in (a block at a time), shards out: a block never straddles two shards and one shard
    of at most ``max_bytes`` (or one block, if larger) is held in memory. ``common_metadata`` goes
    into every shard's header (e.g. ``{"format": "pt"}`` and torchao's full ``tensor_names``), a
    block's own metadata only into its shard. One shard is written as ``model.safetensors``; more
    as transformers names them, with its index file."""

    def __init__(self, folder: str | os.PathLike, max_bytes: int | None = None,
                 common_metadata: dict[str, str] | None = None):
        self.folder = Path(folder)
        self.common = dict(common_metadata or {"format": "pt"})
        self.folder.mkdir(parents=True, exist_ok=True)
        self.max_bytes = SHARD_BYTES if max_bytes is None else max_bytes
        self._tensors: dict[str, Any] = {}
        self._meta: dict[str, str] = {}
        self._bytes = 0
        self._parts: list[tuple[Path, list[str]]] = []
        self.total_bytes = 0

    def add(self, tensors: dict[str, Any], metadata: dict[str, str] | None = None) -> None:
        size = sum(t.numel() * t.element_size() for t in tensors.values())
        if self._tensors and self._bytes + size > self.max_bytes:
            self._flush()
        for k, t in tensors.items():
            if k in self._tensors:
                raise ValueError(f"tensor {k} written twice")
            self._tensors[k] = t.detach().to("cpu").contiguous()
        self._meta.update(metadata or {})
        self._bytes += size
        self.total_bytes += size

    def _flush(self) -> None:
        from safetensors.torch import save_file

        part = self.folder / f".part-{len(self._parts) + 1:05d}.safetensors.tmp"
        meta = {**self._meta, **self.common}
        save_file(self._tensors, str(part), metadata=meta)
        self._parts.append((part, list(self._tensors)))
        self._tensors, self._meta, self._bytes = {}, {}, 0

    def close(self) -> list[Path]:
        """Write the last shard, name the shards and the index; returns the shard files."""
        if self._tensors or not self._parts:
            self._flush()
        n = len(self._parts)
        names = [SINGLE_FILE] if n == 1 else [f"model-{i + 1:05d}-of-{n:05d}.safetensors" for i in range(n)]
        weight_map = {}
        out = []
        for (part, keys), name in zip(self._parts, names):
            part.rename(self.folder / name)
            out.append(self.folder / name)
            weight_map.update({k: name for k in keys})
        if n > 1:
            meta: dict[str, Any] = {"total_size": self.total_bytes}
            (self.folder / INDEX_FILE).write_text(
                json.dumps({"metadata": meta, "weight_map": dict(sorted(weight_map.items()))}, indent=2,
                           sort_keys=True) + "\n", encoding="utf-8")
        return out


# -- a model on the meta device, materialized block by block ----------------------------------
def _is_float(t: Any) -> bool:
    return t.is_floating_point()


class BlockModel:
    """A transformers causal LM on the meta device over ``model_dir``'s shards. ``load(block)``
    materializes a block's parameters (floating ones cast to ``dtype``), ``unload(block)`` puts
    them back on the meta device. ``prepare(model)`` runs on the empty model first (e.g.
    bitsandbytes' Linear replacement); ``convert_param(model, name, tensor)`` may return the
    parameter to hold instead of the tensor (e.g. transformers' quantize-on-load op), None to keep it."""

    def __init__(self, model_dir: str | os.PathLike, dtype: Any, *, prepare: Callable[[Any], None] | None = None,
                 convert_param: Callable[[Any, str, Any], Any] | None = None, trust_remote_code: bool = False):
        import torch
        from accelerate import init_empty_weights
        from transformers import AutoConfig, AutoModelForCausalLM

        self.model_dir = Path(model_dir)
        self.dtype = dtype
        self.config = AutoConfig.from_pretrained(self.model_dir, trust_remote_code=trust_remote_code)
        with init_empty_weights():
            model = AutoModelForCausalLM.from_config(self.config, dtype=dtype, trust_remote_code=trust_remote_code)
        model.tie_weights()
        model.eval()
        if prepare is not None:
            with init_empty_weights():
                prepare(model)
        self.model = model
        self.convert_param = convert_param
        self.reader = ShardReader(self.model_dir)
        # parameter name -> every (module, attribute) holding it (tied weights: several)
        self._holders: dict[str, list[tuple[Any, str]]] = {}
        first: dict[int, str] = {}
        for mname, mod in model.named_modules():
            for pname, p in list(mod._parameters.items()) + list(mod._buffers.items()):
                if p is None:
                    continue
                full = f"{mname}.{pname}" if mname else pname
                key = first.setdefault(id(p), full)
                self._holders.setdefault(key, []).append((mod, pname))
        persistent = set(model.state_dict(keep_vars=True))
        #: the names a checkpoint holds: each tensor once (tied ones under their first name)
        self.names = [n for n in self._holders if n in persistent]
        missing = [n for n in self.names if n not in self.reader and not self._optional(n)]
        if missing:
            raise NotStreamable(f"{len(missing)} parameters are not in the checkpoint under their own names "
                                f"(e.g. {missing[0]}); transformers renames them on load")
        self.layers_name, self.layers = _decoder_layers(model, self.config)

    def _optional(self, name: str) -> bool:
        mod, attr = self._holders[name][0]
        return attr in mod._buffers  # persistent buffers the checkpoint may omit keep their init

    def blocks(self) -> list[tuple[str, list[str]]]:
        """``(block name, parameter names)`` in checkpoint order: each decoder layer is a block, the
        input and output embeddings form one (tied or not), everything else one per module."""
        emb = self.model.get_input_embeddings()
        head = self.model.get_output_embeddings()
        emb_ids = {id(emb)} | ({id(head)} if head is not None else set())
        mod_of = {}
        for mname, mod in self.model.named_modules():
            for pname in list(mod._parameters) + list(mod._buffers):
                mod_of[f"{mname}.{pname}" if mname else pname] = (mname, mod)
        out: dict[str, list[str]] = {}
        prefix = self.layers_name + "."
        for n in self.names:
            mname, mod = mod_of[n]
            if n.startswith(prefix):
                b = prefix + n[len(prefix):].split(".", 1)[0]
            elif id(mod) in emb_ids:
                b = "embeddings"
            else:
                b = mname
            out.setdefault(b, []).append(n)
        return list(out.items())

    def load(self, names: Iterable[str], device: str = "cpu") -> None:
        import torch

        for n in names:
            if n not in self.reader:
                continue
            t = self.reader.get(n)
            if _is_float(t) and self.dtype is not None:
                t = t.to(self.dtype)
            t = t.to(device)
            new = self.convert_param(self.model, n, t) if self.convert_param is not None else None
            for mod, attr in self._holders[n]:
                if attr in mod._parameters:
                    mod._parameters[attr] = new if new is not None else torch.nn.Parameter(t, requires_grad=False)
                else:
                    mod._buffers[attr] = t
            self._retie(n)

    def _retie(self, name: str) -> None:
        holders = self._holders[name]
        if len(holders) < 2:
            return
        mod0, attr0 = holders[0]
        p = mod0._parameters.get(attr0, None) if attr0 in mod0._parameters else mod0._buffers[attr0]
        for mod, attr in holders[1:]:
            if attr in mod._parameters:
                mod._parameters[attr] = p
            else:
                mod._buffers[attr] = p

    def unload_names(self, names: Iterable[str]) -> None:
        """Those parameters back on the meta device (their memory freed), tied copies with them."""
        import torch

        for n in names:
            for mod, attr in self._holders[n]:
                if attr in mod._parameters and mod._parameters[attr] is not None:
                    p = mod._parameters[attr]
                    mod._parameters[attr] = torch.nn.Parameter(
                        torch.empty(tuple(p.shape), dtype=getattr(p, "dtype", None), device="meta"),
                        requires_grad=False)
            self._retie(n)

    def module(self, name: str) -> Any:
        return self.model.get_submodule(name)


def _decoder_layers(model: Any, config: Any) -> tuple[str, Any]:
    """The ``nn.ModuleList`` of decoder layers: the one with ``num_hidden_layers`` entries."""
    import torch

    n = getattr(config.get_text_config() if hasattr(config, "get_text_config") else config, "num_hidden_layers", None)
    for name, mod in model.named_modules():
        if isinstance(mod, torch.nn.ModuleList) and len(mod) == n:
            return name, mod
    raise NotStreamable("no ModuleList of num_hidden_layers decoder layers")


def block_state(bm: BlockModel, names: list[str]) -> dict[str, Any]:
    """The current tensors of the modules owning ``names`` (after the caller's in-place
    transform), as each module saves itself (``_save_to_state_dict``: a bitsandbytes weight adds its
    quant state), under checkpoint names; a tied copy is not an owner, so it is written once."""
    out: dict[str, Any] = {}
    for o in dict.fromkeys(n.rsplit(".", 1)[0] for n in names):
        bm.model.get_submodule(o)._save_to_state_dict(out, f"{o}.", False)
    return out


def stream_folder(bm: BlockModel, *, dtype: str, convert: Callable[[str, list[str]], None] | None = None,
                  serialize: Callable[[dict], tuple[dict, dict]] | None = None,
                  common_metadata: dict[str, str] | None = None, quantization_config: Any = None,
                  work_dir: str | os.PathLike | None = None, device: str = "cpu") -> "WrittenOutput":
    """A transformers folder written block by block: each block materialized (cast to ``bm``'s
    dtype), ``convert(block, names)`` applied in place (None: the cast alone), its state
    (``serialize``-d into tensors and header metadata, e.g. torchao's flattening) written, freed;
    then config.json with ``dtype`` and ``quantization_config``."""
    work = scratch_dir(work_dir)
    out = WrittenOutput(work)
    writer = ShardWriter(work, common_metadata=common_metadata)
    for block, names in bm.blocks():
        bm.load(names, device)
        if convert is not None:
            convert(block, names)
        state = block_state(bm, names)
        tensors, meta = serialize(state) if serialize is not None else (state, {})
        del state
        writer.add(tensors, meta)
        del tensors
        bm.unload_names(names)
    writer.close()
    write_config(work, bm.model_dir, bm.config, dtype=dtype, quantization_config=quantization_config,
                 architectures=[type(bm.model).__name__])
    qc = quantization_config
    out.quantization_config = qc if isinstance(qc, dict) or qc is None else qc.to_dict()
    return out


# -- writing the rest of a transformers folder --------------------------------------------------
def write_config(out: Path, model_dir: Path, config: Any, *, dtype: str | None,
                 quantization_config: Any = None, architectures: list[str] | None = None) -> None:
    """config.json and generation_config.json as ``save_pretrained`` writes them."""
    from transformers import GenerationConfig

    if quantization_config is not None:
        config.quantization_config = quantization_config
    if dtype is not None:
        config.dtype = dtype
    if architectures is not None:
        config.architectures = architectures
    config.save_pretrained(out)
    try:
        gen = GenerationConfig.from_pretrained(model_dir)
    except OSError:
        gen = GenerationConfig.from_model_config(config)
    gen.save_pretrained(out)


# -- an output written while quantizing ------------------------------------------------------------
@dataclass
class WrittenOutput:
    """What a plugin that writes its output while quantizing returns: the scratch folder holding the
    finished files (removed when this object is freed) and the ``quantization_config`` recorded."""

    folder: Path
    quantization_config: dict | None = None
    extra: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._finalizer = weakref.finalize(self, shutil.rmtree, str(self.folder), True)

    def place(self, out: Path) -> None:
        """Hard-link (same file system: no copy, no extra space) or copy every file into ``out``."""
        for f in sorted(self.folder.iterdir()):
            dst = Path(out) / f.name
            try:
                os.link(f, dst)
            except OSError:
                shutil.copyfile(f, dst)


def scratch_dir(near: str | os.PathLike | None = None) -> Path:
    """A fresh folder for an output being written, next to ``near`` when given (same file system
    as the final output: placing it is a hard link, not a copy)."""
    import tempfile

    base = Path(near).expanduser() if near else None
    if base is not None:
        base.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=".llmq-work-", dir=str(base) if base else None))


# -- calibration one decoder layer at a time -------------------------------------------------------
class _Caught(Exception):
    pass


class LayerRunner:
    """Calibration samples through a :class:`BlockModel`, one decoder layer in memory at a time.
    ``start(samples)`` runs the embeddings and catches what layer 0 receives; then for each layer,
    ``with runner.layer(i) as layer:`` materializes it and ``runner.forward(layer)`` replaces every
    sample's hidden state by that layer's output (the caller's hooks see each sublayer), which is
    exactly the whole model's forward, one layer after the other."""

    def __init__(self, bm: BlockModel, device: str = "cpu"):
        self.bm = bm
        self.device = device
        self.hidden: list[Any] = []
        self.kwargs: list[dict] = []

    def start(self, samples: Iterable[Iterable[int]]) -> None:
        import torch

        bm = self.bm
        # everything outside the decoder layers: the embeddings, and what some architectures run before
        # layer 0 (OPT's learned positions and project_in)
        emb_names = [n for n in bm.names if not n.startswith(bm.layers_name + ".")]
        bm.load(emb_names, self.device)
        first = bm.layers[0]

        def catch(_mod, args, kwargs):
            self.hidden.append(args[0] if args else kwargs.pop("hidden_states"))
            self.kwargs.append({k: v for k, v in kwargs.items() if k != "hidden_states"})
            raise _Caught

        h = first.register_forward_pre_hook(catch, with_kwargs=True)
        try:
            with torch.no_grad():
                for s in samples:
                    try:
                        bm.model(torch.tensor([list(s)], device=self.device), use_cache=False)
                    except _Caught:
                        pass
        finally:
            h.remove()
            bm.unload_names(emb_names)

    @contextmanager
    def layer(self, i: int) -> Iterator[Any]:
        bm = self.bm
        name = f"{bm.layers_name}.{i}"
        names = dict(bm.blocks())[name]
        bm.load(names, self.device)
        try:
            yield bm.layers[i]
        finally:
            bm.unload_names(names)

    def forward(self, layer: Any, *, keep: bool = True) -> None:
        """Run every sample through ``layer``; ``keep``: its outputs become the next layer's inputs."""
        import torch

        with torch.no_grad():
            for j, (x, kw) in enumerate(zip(self.hidden, self.kwargs)):
                y = layer(x, **kw)
                y = y[0] if isinstance(y, (tuple, list)) else y
                if keep:
                    self.hidden[j] = y

    def record(self, layer: Any, names: list[str], keep_outputs: int = 0) -> "Replay":
        """Run every sample through ``layer`` (advancing the hidden states) and record the inputs of
        its Linears ``names`` (shared inputs once: q/k/v read one tensor) and, for the first
        ``keep_outputs`` samples, their outputs: a calibration source replayed without recomputing."""
        rep = Replay(names)
        mods = dict(layer.named_modules())

        def hook(n: str):
            def fn(_mod: Any, args: Any, out: Any) -> None:
                rep.x[n].append(args[0].detach())
                if len(rep.y[n]) < keep_outputs:
                    rep.y[n].append(out.detach())
            return fn

        hs = [mods[n].register_forward_hook(hook(n)) for n in names]
        try:
            self.forward(layer)
        finally:
            for h in hs:
                h.remove()
        return rep


class Replay:
    """One layer's recorded Linear inputs (and first outputs), replayed as a calibration source:
    ``replay(names, see, limit)`` calls ``see(name, input, output)`` sample by sample, as hooks on
    the running model would (output None beyond the recorded ones)."""

    def __init__(self, names: list[str]):
        self.x: dict[str, list[Any]] = {n: [] for n in names}
        self.y: dict[str, list[Any]] = {n: [] for n in names}

    def __call__(self, names: Iterable[str], see: Callable[[str, Any, Any], None], limit: int | None = None) -> None:
        names = list(names)
        if not names:
            return
        n_samples = len(self.x[names[0]]) if limit is None else min(limit, len(self.x[names[0]]))
        for j in range(n_samples):
            for n in names:
                see(n, self.x[n][j], self.y[n][j] if j < len(self.y[n]) else None)
