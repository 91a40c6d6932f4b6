"""A small generic registry with lazy ``"module:attr"`` entries.

Modelled on lm-evaluation-harness's ``lm_eval/api/registry.py``: entries may be registered as the
object itself or as an import string, so listing backends never imports torch or a backend
package; duplicate names raise; an unknown name raises with the nearest valid one.
"""

from __future__ import annotations

import importlib
from typing import Any, Callable, Generic, Iterator, Mapping, MutableMapping, TypeVar

from llmq.errors import UnknownNameError

T = TypeVar("T")


def import_target(target: str) -> Any:
    """``"module:attr"`` -> the object; the module is imported only now."""
    module, attr = target.split(":", 1)
    return getattr(importlib.import_module(module), attr)


def lazy_exports(module_name: str, targets: Mapping[str, str], namespace: MutableMapping[str, Any]
                 ) -> Callable[[str], Any]:
    """A module ``__getattr__`` (PEP 562) that imports each of ``targets`` on first use and keeps it in
    the module's ``namespace``, so a package's public names cost nothing until they are used."""
    def __getattr__(name: str) -> Any:
        target = targets.get(name)
        if target is None:
            raise AttributeError(f"module {module_name!r} has no attribute {name!r}")
        namespace[name] = value = import_target(target)
        return value

    return __getattr__


class Registry(Generic[T]):
    def __init__(self, kind: str, before_read: Callable[[], None] | None = None):
        """``before_read``: called before every lookup, for a registry filled from another one (the
        schemes, read from the plugins registered so far)."""
        self.kind = kind
        self._entries: dict[str, T | str] = {}
        self._before_read = before_read or (lambda: None)

    def register(self, name: str, target: T | str | None = None) -> Callable[[T], T] | T | str:
        """Register ``target`` under ``name``; used bare it is a decorator."""
        if name in self._entries:
            raise ValueError(f"{self.kind} {name!r} is already registered")
        if target is None:
            def deco(obj: T) -> T:
                self._entries[name] = obj
                return obj
            return deco
        if isinstance(target, str) and ":" not in target:
            raise ValueError(f"lazy {self.kind} entry must be 'module:attr', got {target!r}")
        self._entries[name] = target
        return target

    def get(self, name: str) -> T:
        self._before_read()
        if name not in self._entries:
            raise UnknownNameError(self.kind, name, self._entries)
        entry = self._entries[name]
        if isinstance(entry, str):
            entry = import_target(entry)
            self._entries[name] = entry
        return entry  # type: ignore[return-value]

    def unregister(self, name: str) -> None:
        """Remove ``name`` (a plugin registered at run time, in tests); unknown names are ignored."""
        self._entries.pop(name, None)

    def is_loaded(self, name: str) -> bool:
        return not isinstance(self._entries.get(name), str)

    def names(self) -> list[str]:
        self._before_read()
        return list(self._entries)

    def __contains__(self, name: object) -> bool:
        self._before_read()
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self.names())
