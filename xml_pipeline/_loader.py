"""Import the payload classes and handlers an organism file names, and check them.

Each dotted path is read into an `ImportPath` and resolved by `xml_pipeline._imports`, the one
resolver, which imports modules of the organism's folder the ordinary way
(folder first on ``sys.path``) when their names are free, so a user's own tests that
``import handlers`` get the very same classes the pump uses; under a package named after the
folder when another organism's folder already took a name, so that two organisms with a
``handlers.py`` each run side by side. Every problem is collected and reported at once,
pointing at the key path and line of the organism file, like `xml_pipeline._config` does for the
file itself; a module that fails to import is reported at every listener that uses it.
"""

from __future__ import annotations

import difflib
import importlib
import inspect
import os
import pkgutil
import traceback
from pathlib import Path
from types import ModuleType

from xml_pipeline._config import ListenerConfig, OrganismConfig, load_config
from xml_pipeline._errors import ConfigError, ConfigProblem
from xml_pipeline._handlers import Listener
from xml_pipeline._imports import (
    ImportPath,
    ModuleClash,
    folder_package,
    in_folder,
    load_module,
    lookup,
    resolve,
)
from xml_pipeline._settings import ListenerSettings, values_of
from xml_pipeline._wire.payloads import is_payload

__all__ = [
    "handler_signature_problem",
    "load_organism",
    "validate_organism",
    "worker_import_problem",
]

_PACKAGE_DIR = Path(__file__).resolve().parent  # frames in here are the library's, not the user's


def load_organism(config: OrganismConfig) -> tuple[Listener, ...]:
    """Import every listener's payload class and handler: the organism's `Listener` objects, in
    the file's order (the config keeps the names' key paths and lines).

    Modules found in the organism's folder are imported from it (see `xml_pipeline._imports`);
    the folder goes first on ``sys.path`` (unless it is there already) when its module names
    are free in this process.

    Raises:
        ConfigError: a module cannot be found or fails to import (reported at every listener
            that uses it), a name is missing, a payload class is not a ``@payload`` class, a
            handler is not callable, cannot be called as ``handler(payload, metadata)`` or (for
            ``cpu_bound`` listeners) cannot be imported by a worker process. Every problem is
            listed with its key path and line.
    """
    importlib.invalidate_caches()  # the folder's files may be newer than the finders' caches
    importer = _Importer(str(config.file), str(config.folder))
    listeners = [
        importer.listener(listener, index) for index, listener in enumerate(config.listeners)
    ]
    if importer.problems:
        raise ConfigError(importer.problems)
    return tuple(listener for listener in listeners if listener is not None)


def validate_organism(
    path: str | os.PathLike[str],
) -> tuple[OrganismConfig, tuple[Listener, ...]]:
    """Read an organism file and import everything it names: what ``organism validate`` does.

    Raises:
        ConfigError: the file's problems; or, when the file itself is valid, the problems
            found while importing its payload classes and handlers.
    """
    config = load_config(path)
    return config, load_organism(config)


_MISSING = object()  # a name that could not be resolved (a problem was reported)


class _Importer:
    """Imports modules for one organism, remembering failures so each listener reports them."""

    def __init__(self, file: str, folder: str) -> None:
        self.file = file
        self.folder = folder
        self.problems: list[ConfigProblem] = []
        self._modules: dict[str, ModuleType | str] = {}  # a module, or why it failed

    def report(self, key_path: str, line: int | None, message: str) -> None:
        self.problems.append(ConfigProblem(self.file, key_path, line, message))

    def listener(self, listener: ListenerConfig, index: int) -> Listener | None:
        """Import one listener's payload class and handler, reporting what is wrong; the
        `Listener` when nothing is."""
        base = listener.key_path or f"listeners[{index}]"
        reported = len(self.problems)
        failed: set[str] = set()  # modules whose failure this listener reported already
        where = f"{base}.payload_class", listener.payload_class_line
        payload_class = self.resolve(listener.payload_class, *where, failed)
        if payload_class is not _MISSING and (problem := _payload_class_problem(payload_class)):
            self.report(*where, f"{listener.payload_class}{_defined_at(payload_class)} {problem}")
        where = f"{base}.handler", listener.handler_line
        handler = self.resolve(listener.handler, *where, failed)
        if handler is _MISSING:
            pass
        elif not callable(handler):
            kind = type(handler).__name__
            message = f"{listener.handler} is not callable (it is of type {kind}); name a function"
            self.report(*where, message)
        elif problem := handler_signature_problem(handler, listener.handler):
            self.report(*where, problem)
        elif listener.cpu_bound and (problem := worker_import_problem(handler)):
            self.report(*where, f"{listener.handler}: {problem}")
        compensate = None
        if listener.compensate is not None:
            where = f"{base}.compensate", listener.compensate_line
            compensate = self.resolve(listener.compensate, *where, failed)
            if compensate is _MISSING:
                pass
            elif not callable(compensate):
                kind = type(compensate).__name__
                self.report(*where, f"{listener.compensate} is not callable (it is {kind})")
            elif problem := handler_signature_problem(compensate, listener.compensate):
                self.report(*where, problem)
        if listener.retry is not None:
            for i, path in enumerate(listener.retry.never):
                self.exception_class(path, f"{base}.retry.never[{i}]", listener.line, failed)
        if (
            len(self.problems) > reported
            or not isinstance(payload_class, type)
            or not callable(handler)
        ):
            return None
        settings = values_of(ListenerSettings, listener)
        return Listener(
            listener.name,
            payload_class,
            handler,
            compensate=compensate if callable(compensate) else None,
            **settings,
        )

    def exception_class(
        self, dotted: str, key_path: str, line: int | None, failed: set[str]
    ) -> None:
        """Report a ``never`` entry that does not name an importable exception class."""
        found = self.resolve(dotted, key_path, line, failed)
        if found is not _MISSING and not (
            isinstance(found, type) and issubclass(found, BaseException)
        ):
            self.report(key_path, line, f"{dotted} is not an exception class; name one")

    def resolve(self, dotted: str, key_path: str, line: int | None, failed: set[str]) -> object:
        """The object a ``module.name`` path names, or `_MISSING` after a report.

        A module that failed is reported once per listener (``failed`` holds the modules this
        listener has reported), so that every listener using it is pointed at.
        """
        written = ImportPath.from_dotted(dotted)  # the config reader checked the form
        module_name, attr = written.module, written.qualname
        if module_name not in self._modules:
            self._modules[module_name] = self._import(written)
        module = self._modules[module_name]
        if isinstance(module, str):
            if module_name not in failed:
                failed.add(module_name)
                self.report(key_path, line, module)
            return _MISSING
        try:
            return lookup(module, attr)
        except AttributeError:
            pass
        names = [name for name in dir(module) if not name.startswith("__")]
        close = difflib.get_close_matches(attr, names, n=1)
        hint = f"did you mean {close[0]!r}?" if close else f"define {attr} there or fix the name"
        where = getattr(module, "__file__", None) or module_name
        self.report(key_path, line, f"module {module_name!r} ({where}) has no {attr!r}; {hint}")
        return _MISSING

    def _import(self, written: ImportPath) -> ModuleType | str:
        """The module of a path as the organism file writes it, or what to report about it."""
        module_name = written.module
        try:
            return load_module(in_folder(written, self.folder))
        except ModuleClash as exc:
            return str(exc)
        except ModuleNotFoundError as exc:
            # inside the folder's own package the names carry its prefix: show them as written
            missing = (exc.name or "").removeprefix(folder_package(self.folder) + ".")
            if not missing or not _is_prefix(missing, module_name):
                return _import_failure(module_name, exc)
            return self._not_found(module_name, missing)
        except Exception as exc:  # the module's own code failed; say how
            return _import_failure(module_name, exc)

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


def _is_prefix(name: str, module_name: str) -> bool:
    return module_name == name or module_name.startswith(name + ".")


def _import_failure(module_name: str, exc: BaseException) -> str:
    frames = traceback.extract_tb(exc.__traceback__)
    user = [f for f in frames if _is_user_frame(f.filename)]
    text = f"{type(exc).__name__}: {exc}"
    at = ""
    if user and user[-1].filename not in text:  # a message that names the place already is kept
        at = f" at {user[-1].filename}:{user[-1].lineno}"
    return (
        f"importing module {module_name!r} raised {text}{at}; fix that error (try "
        f"`python -c 'import {module_name}'` in the organism's folder)"
    )


def _is_user_frame(filename: str) -> bool:
    """Whether a traceback frame is the user's code, not Python's import system or ours."""
    if filename[:1] == "<":
        return False
    path = Path(filename)
    return "importlib" not in path.parts and not path.resolve().is_relative_to(_PACKAGE_DIR)


def _defined_at(obj: object) -> str:
    """`` (file:line)`` where a class or function is defined, when Python can tell."""
    try:
        target = inspect.unwrap(obj) if callable(obj) else obj
        file = inspect.getsourcefile(target)  # type: ignore[arg-type]
        line = inspect.getsourcelines(target)[1]  # type: ignore[arg-type]
    except (OSError, TypeError):
        return ""
    return f" ({file}:{line})" if file else ""


def handler_signature_problem(handler: object, name: str | None = None) -> str | None:
    """Why ``handler`` cannot be called as ``handler(payload, metadata)``, if it cannot.

    Sync and async handlers are both fine. ``name`` is how to call the handler in the message
    (the dotted path of the organism file); ``module.qualname`` by default. Used when an
    organism file is loaded and when `Organism` is built from `Listener` objects.

    Returns:
        None when the call works; else one sentence: what is wrong, where the handler is
        defined, and what to change (too few or too many required positional parameters,
        required keyword-only parameters, a generator function).
    """
    problem = _signature_problem(handler)
    if problem is None:
        return None
    label = (name or _qualified_name(handler)) + _defined_at(handler)
    return f"{label} {problem}"


def _signature_problem(handler: object) -> str | None:
    call = "a handler is called as handler(payload, metadata)"
    if inspect.isgeneratorfunction(handler) or inspect.isasyncgenfunction(handler):
        return (
            f"is a generator function (it yields); {call} and returns None, a "
            f"HandlerResponse or a list of them: return them instead of yielding"
        )
    try:
        signature = inspect.signature(handler)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None  # some builtins have none: the call will tell
    params = list(signature.parameters.values())
    kinds = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    positional = [p.name for p in params if p.kind in kinds]
    required = [p.name for p in params if p.kind in kinds and p.default is p.empty]
    varargs = any(p.kind is inspect.Parameter.VAR_POSITIONAL for p in params)
    keyword_only = [
        p.name for p in params if p.kind is inspect.Parameter.KEYWORD_ONLY and p.default is p.empty
    ]
    if len(positional) < 2 and not varargs:
        takes = {0: "no positional arguments", 1: "1 positional argument"}[len(positional)]
        return (
            f"takes {takes}; {call}: give it two parameters, such as (msg, meta: HandlerMetadata)"
        )
    if len(required) > 2:
        return (
            f"requires {len(required)} positional arguments ({', '.join(required)}); "
            f"{call}: give those after the second a default, or remove them"
        )
    if keyword_only:
        listed = ", ".join(repr(n) for n in keyword_only)
        if len(keyword_only) == 1:
            what, fix = "argument", "give it a default, or remove it"
        else:
            what, fix = "arguments", "give them defaults, or remove them"
        return f"requires keyword-only {what} {listed}; {call}: {fix}"
    return None


def _qualified_name(obj: object) -> str:
    module = getattr(obj, "__module__", None)
    qualname = getattr(obj, "__qualname__", None)
    if isinstance(module, str) and isinstance(qualname, str):
        return f"{module}.{qualname}"
    return f"handler {obj!r}"


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
        try:  # exactly what a worker will do (by file, for a module of an organism folder)
            found = resolve(ImportPath.of(handler))
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
