"""The config base classes every scheme plugin builds on; each plugin (``llmq/backends/*.py``)
defines its own config dataclass next to its quantize code.

Configs validate in ``__post_init__`` with ``ConfigError`` (a ``ValueError``), never ``assert``
(stripped under ``python -O``). ``with_overrides`` is the one way user keyword arguments reach a
config, so an unknown override is rejected with the list of valid ones.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, ClassVar

from llmq.errors import ConfigError, UnknownNameError

DTYPES = ("float32", "float16", "bfloat16")


def check_choice(name: str, value: Any, choices: tuple) -> None:
    if value not in choices:
        raise ConfigError(f"{name}={value!r} is invalid; choose one of {', '.join(map(repr, choices))}.")


# -- thresholds (gate limits, the advisor's tolerance, QAT's early stop) --------------------------
def parse_fraction(value: Any, what: str = "--max-ppl-increase") -> float | None:
    """The one threshold rule (gate limits, the advisor's tolerance): ``"5%"`` -> 0.05; ``0.05`` /
    ``"0.05"`` -> 0.05. A bare number of 1 or more is refused (is ``5`` five percent or 500%?): write
    ``5%``. Percentages above 100% are allowed (perplexity can more than double); negatives are not."""
    if value is None or value == "":
        return None
    text = str(value).strip()
    try:
        x = float(text[:-1]) / 100 if text.endswith("%") else float(text)
    except ValueError:
        raise ConfigError(f"{what} expects a percentage like 5% or a fraction like 0.05, got {text!r}.") from None
    if not text.endswith("%") and x >= 1:
        raise ConfigError(f"{what} {text} is ambiguous: write {text}% or a fraction like {x / 100:g}.")
    if x < 0:
        raise ConfigError(f"{what} must not be negative, got {text}.")
    return x


def parse_increase(value: Any) -> float | None:
    """``--max-ppl-increase``: ``parse_fraction``."""
    return parse_fraction(value, "--max-ppl-increase")


@dataclass(kw_only=True)
class SchemeConfig:
    """Fields every scheme shares."""

    #: how the description is shown in ``llmq schemes``
    kind: ClassVar[str] = "base"

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:  # pragma: no cover - overridden
        pass

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        for k, v in out.items():
            if isinstance(v, tuple):
                out[k] = list(v)
        return out

    def with_overrides(self, **overrides: Any) -> "SchemeConfig":
        names = {f.name for f in dataclasses.fields(self)}
        for key in overrides:
            if key not in names:
                raise UnknownNameError(f"option for {type(self).__name__}", key, names)
        from llmq.safety import check_field_types

        check_field_types(type(self), overrides)
        values = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        values.update(overrides)
        if "skip_modules" in values and isinstance(values["skip_modules"], (list, str)):
            sm = values["skip_modules"]
            values["skip_modules"] = tuple([sm] if isinstance(sm, str) else sm)
        return type(self)(**values)


@dataclass(kw_only=True)
class QuantConfigBase(SchemeConfig):
    """Schemes that replace Linear weights. ``skip_modules``: names or fnmatch patterns kept in full
    precision; ``lm_head`` and tied embeddings are never quantized by default. ``format``: the
    checkpoint format of the output, one of ``formats`` (None: the plugin's own, e.g. torchao's or
    GPTQ's); ``format_defaults`` are the defaults a format changes (``Scheme.config`` applies them
    before the user's overrides), e.g. compressed-tensors keeps embeddings float because vLLM reads
    no quantized embeddings."""

    #: the checkpoint formats a config of this class may ask for besides its plugin's own
    formats: ClassVar[tuple[str, ...]] = ()
    #: format -> the defaults that format changes
    format_defaults: ClassVar[dict[str, dict[str, Any]]] = {}
    skip_modules: tuple[str, ...] = ()
    format: str | None = None

    def validate(self) -> None:
        if self.format is not None and self.format not in self.formats:
            own = f"choose one of {', '.join(map(repr, self.formats))}, or leave it out for " if self.formats else ""
            raise ConfigError(f"format={self.format!r} is invalid for {type(self).__name__}; {own}"
                              f"{'the' if self.formats else 'it writes only'} its plugin's own format.")
        if isinstance(self.skip_modules, str):
            self.skip_modules = (self.skip_modules,)
        self.skip_modules = tuple(self.skip_modules)
        for s in self.skip_modules:
            if not isinstance(s, str) or not s:
                raise ConfigError(f"skip_modules entries must be non-empty strings, got {s!r}.")


@dataclass(kw_only=True)
class CalibratedConfig(QuantConfigBase):
    """Schemes that need calibration text. ``calibration`` is a named dataset (``wikitext2``,
    ``c4``, ``pileval``, ``builtin``), a local .txt/.jsonl/.parquet path, or a list of strings."""

    bits: int = 4
    group_size: int = 128
    sym: bool = True
    calibration: Any = "wikitext2"
    n_samples: int = 128
    seqlen: int = 512
    seed: int = 0
    allowed_bits: ClassVar[tuple[int, ...]] = (2, 3, 4, 8)

    def validate(self) -> None:
        super().validate()
        if self.bits not in self.allowed_bits:
            raise ConfigError(
                f"bits={self.bits!r} is invalid for {type(self).__name__}; choose one of "
                f"{', '.join(map(str, self.allowed_bits))}."
            )
        if not isinstance(self.group_size, int) or not (
            self.group_size == -1 or (self.group_size >= 16 and self.group_size & (self.group_size - 1) == 0)
        ):
            raise ConfigError(
                f"group_size={self.group_size!r} is invalid; use -1 (per channel) or a power of two >= 16 "
                "(32, 64, 128, ...)."
            )
        if not isinstance(self.n_samples, int) or self.n_samples < 1:
            raise ConfigError(f"n_samples must be a positive integer, got {self.n_samples!r}.")
        if not isinstance(self.seqlen, int) or self.seqlen < 8:
            raise ConfigError(f"seqlen must be an integer >= 8, got {self.seqlen!r}.")
        if not isinstance(self.sym, bool):
            raise ConfigError(f"sym must be True or False, got {self.sym!r}.")

    def to_dict(self) -> dict[str, Any]:
        out = super().to_dict()
        if not isinstance(self.calibration, (str, type(None))):
            out["calibration"] = f"<{len(self.calibration)} strings>"
        return out
