"""Import the payload classes and handlers an organism file names.

Modules are imported the ordinary way (`importlib.import_module`), with the organism file's
folder first on ``sys.path``, so a user's own tests that ``import handlers`` get the very same
classes the pump uses. Every problem is collected and reported at once, pointing at the key path
and line of the organism file, like `xml_pipeline.config` does for the file itself.
"""

from __future__ import annotations

import difflib
import importlib
import importlib.machinery
import os
import pkgutil
import sys
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

from xml_pipeline.config import ListenerConfig, OrganismConfig, load_config
from xml_pipeline.errors import ConfigError, ConfigProblem
from xml_pipeline.payloads import is_payload

__all__ = ["ResolvedListener", "load_organism", "validate_organism"]


@dataclass(frozen=True, slots=True)
class ResolvedListener:
    """A listener's config with its payload class and handler imported."""

    config: ListenerConfig
    payload_class: type
    handler: Callable[..., Any]

    @property
    def name(self) -> str:
        """The listener's name."""
        return self.config.name


def load_organism(config: OrganismConfig) -> tuple[ResolvedListener, ...]:
    """Import every listener's payload class and handler.

    The organism's folder is put first on ``sys.path`` (unless it is already there).

    Raises:
        ConfigError: a module cannot be found or fails to import, a name is missing, a
            payload class is not a ``@payload`` class, a handler is not callable or (for
            ``cpu_bound`` listeners) cannot be imported by a worker process, or a module name
            clashes with a module of the same name already imported from another folder.
            Every problem is listed with its key path and line.
    """
    folder = str(config.folder)
    if folder not in sys.path:
        sys.path.insert(0, folder)
    importlib.invalidate_caches()  # the folder's files may be newer than the finders' caches
    importer = _Importer(str(config.file), folder)
    resolved = [
        importer.listener(listener, index) for index, listener in enumerate(config.listeners)
    ]
    if importer.problems:
        raise ConfigError(importer.problems)
    return tuple(r for r in resolved if r is not None)


def validate_organism(
    path: str | os.PathLike[str],
) -> tuple[OrganismConfig, tuple[ResolvedListener, ...]]:
    """Read an organism file and import everything it names: what ``organism validate`` does.

    Raises:
        ConfigError: the file's problems; or, when the file itself is valid, the problems
            found while importing its payload classes and handlers.
    """
    config = load_config(path)
    return config, load_organism(config)


_MISSING = object()  # a name that could not be resolved (a problem was reported)


class _Importer:
    """Imports modules for one organism, remembering failures so each is reported once."""

    def __init__(self, file: str, folder: str) -> None:
        self.file = file
        self.folder = folder
        self.problems: list[ConfigProblem] = []
        self._modules: dict[str, ModuleType | None] = {}

    def report(self, key_path: str, line: int | None, message: str) -> None:
        self.problems.append(ConfigProblem(self.file, key_path, line, message))

    def listener(self, listener: ListenerConfig, index: int) -> ResolvedListener | None:
        """Import one listener's payload class and handler, reporting what is wrong."""
        base = listener.key_path or f"listeners[{index}]"
        where = f"{base}.payload_class", listener.payload_class_line
        payload_class = self.resolve(listener.payload_class, *where)
        if payload_class is not _MISSING and (problem := _payload_class_problem(payload_class)):
            self.report(*where, f"{listener.payload_class} {problem}")
        where = f"{base}.handler", listener.handler_line
        handler = self.resolve(listener.handler, *where)
        if handler is _MISSING:
            pass
        elif not callable(handler):
            kind = type(handler).__name__
            message = f"{listener.handler} is not callable (it is of type {kind}); name a function"
            self.report(*where, message)
        elif listener.cpu_bound and (problem := worker_import_problem(handler)):
            self.report(*where, f"{listener.handler}: {problem}")
        if isinstance(payload_class, type) and callable(handler):
            return ResolvedListener(listener, payload_class, handler)
        return None

    def resolve(self, dotted: str, key_path: str, line: int | None) -> object:
        """The object a ``module.name`` path names, or `_MISSING` after a report."""
        module_name, _, attr = dotted.rpartition(".")
        if module_name not in self._modules:
            self._modules[module_name] = self._import(module_name, key_path, line)
        module = self._modules[module_name]
        if module is None:
            return _MISSING
        try:
            return getattr(module, attr)
        except AttributeError:
            pass
        names = [name for name in dir(module) if not name.startswith("__")]
        close = difflib.get_close_matches(attr, names, n=1)
        hint = f"did you mean {close[0]!r}?" if close else f"define {attr} there or fix the name"
        where = getattr(module, "__file__", None) or module_name
        self.report(key_path, line, f"module {module_name!r} ({where}) has no {attr!r}; {hint}")
        return _MISSING

    def _import(self, module_name: str, key_path: str, line: int | None) -> ModuleType | None:
        top = module_name.partition(".")[0]
        if clash := self._clash(top):
            self.report(key_path, line, clash)
            return None
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name is None or not _is_prefix(exc.name, module_name):
                self.report(key_path, line, _import_failure(module_name, exc))
            else:
                self.report(key_path, line, self._not_found(module_name, exc.name))
            return None
        except Exception as exc:  # the module's own code failed; say how
            self.report(key_path, line, _import_failure(module_name, exc))
            return None
        if clash := self._clash(top):  # an earlier sys.path entry provided that name
            self.report(key_path, line, clash)
            return None
        return module

    def _not_found(self, module_name: str, missing: str) -> str:
        message = (
            f"module {missing!r} not found; searched the organism's folder {self.folder} "
            f"and then sys.path"
        )
        local = [m.name for m in pkgutil.iter_modules([self.folder])]
        if "." not in missing and (close := difflib.get_close_matches(missing, local, n=1)):
            return f"{message}; did you mean {close[0]!r}?"
        path = module_name.replace(".", "/")
        return f"{message}; put {path}.py in that folder or fix the dotted path"

    def _clash(self, top: str) -> str | None:
        """Why ``sys.modules[top]`` is not the module this organism's folder provides, if so."""
        loaded = sys.modules.get(top)
        if loaded is None:
            return None
        spec = importlib.machinery.PathFinder.find_spec(top, [self.folder])
        if spec is None:
            return None  # the folder has no such module: whatever is installed is meant
        if spec.has_location and spec.origin is not None:
            ours = spec.origin
            same = _same_file(getattr(loaded, "__file__", None), ours)
        else:  # a namespace package: a directory without __init__.py
            ours = os.path.join(self.folder, top)
            same = any(_same_file(p, ours) for p in getattr(loaded, "__path__", ()))
        if same:
            return None
        theirs = getattr(loaded, "__file__", None) or list(getattr(loaded, "__path__", ()))
        return (
            f"module name clash: {top!r} is already imported in this process from "
            f"{theirs or 'Python itself'}, but this organism's folder has its own {ours}; Python "
            f"keeps one module per name, so rename one of them or move it into a package with a "
            f"unique name"
        )


def _is_prefix(name: str, module_name: str) -> bool:
    return module_name == name or module_name.startswith(name + ".")


def _same_file(a: str | None, b: str) -> bool:
    return a is not None and os.path.realpath(a) == os.path.realpath(b)


def _import_failure(module_name: str, exc: BaseException) -> str:
    frames = traceback.extract_tb(exc.__traceback__)
    user = [
        f for f in frames if f.filename[:1] != "<" and "importlib" not in Path(f.filename).parts
    ]
    at = f" at {user[-1].filename}:{user[-1].lineno}" if user else ""
    return (
        f"importing module {module_name!r} raised {type(exc).__name__}: {exc}{at}; "
        f"fix that error (try `python -c 'import {module_name}'` in the organism's folder)"
    )


def _payload_class_problem(obj: object) -> str | None:
    if not isinstance(obj, type):
        return f"is not a class (it is of type {type(obj).__name__}); name a @payload dataclass"
    if not is_payload(obj):
        return "is not a @payload class; decorate it with @payload above @dataclass"
    return None


def worker_import_problem(handler: object) -> str | None:
    """Why a worker process could not import ``handler`` by module and name, if it could not."""
    module_name = getattr(handler, "__module__", None)
    qualname = getattr(handler, "__qualname__", None)
    if not isinstance(module_name, str) or not isinstance(qualname, str):
        why = f"it is a {type(handler).__name__} object with no module-level name"
    elif module_name == "__main__":
        why = "it is defined in __main__ (the script being run), which a worker does not load"
    elif qualname.rpartition(".")[2] == "<lambda>":
        why = "it is a lambda, which has no name to be imported by"
    elif "<locals>" in qualname:
        why = f"it is a nested function or closure ({qualname}) made inside another function"
    else:
        try:
            found: object = importlib.import_module(module_name)
            for part in qualname.split("."):
                found = getattr(found, part)
        except Exception:
            found = _MISSING
        if found is handler:
            return None
        why = (
            f"{module_name}.{qualname} (the name it carries) is a different object; it was "
            f"probably wrapped by a decorator called as a function (name = deco(f))"
        )
    return (
        f"a cpu_bound handler runs in a worker process, which imports it by module and name, "
        f"but {why}; define it with def at the top level of an importable module (such as a "
        f"module next to organism.yaml) and name that function here"
    )
