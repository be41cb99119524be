"""How user code is imported: an organism folder's modules, and import paths for workers.

Python keeps one module per name, yet two organism folders may each have a ``handlers.py``.
A folder is imported one of two ways, chosen when its first module is imported:

- **short names** when none of its module names is taken by another folder's module: the
  ordinary way, the folder first on ``sys.path``, so a user's own ``import handlers`` gets the
  very module the organism uses;
- **a package of its own** otherwise, named after the folder (`folder_package`:
  ``_xp_hasher_1f2e3d4c5b.handlers``), whose ``__path__`` is the folder. While the folder's
  modules run their top-level code, their absolute imports of sibling modules
  (``import models``) are redirected into that package, so each folder sees its own siblings
  and never another folder's. Such a folder is not put on ``sys.path``.

An `ImportPath` names a module-level object: its module, its qualified name there and, when
the module comes from an organism folder, that folder; `resolve` is the one way to import what
it names (the loader, the worker-importability check and the worker all use it). It has two
written forms, parsed into it:

- ``module.name`` in organism.yaml (`ImportPath.from_dotted`), the module named as the folder
  holds it; `in_folder` then makes it exact for this process (the folder, and the folder's
  package prefix when its short names are taken);
- ``module:qualname@folder`` for a worker process (`import_path`, `ImportPath.parse`), so that a
  worker imports the very same file under the very same name whatever its ``sys.path`` holds,
  and the classes it builds are the ones its handler module defines.
"""

from __future__ import annotations

import functools
import hashlib
import importlib
import importlib.abc
import importlib.machinery
import importlib.util
import keyword
import os
import pkgutil
import re
import sys
import sysconfig
import threading
import weakref
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

__all__ = [
    "ImportPath",
    "ModuleClash",
    "folder_package",
    "import_in_folder",
    "import_path",
    "in_folder",
    "load_module",
    "lookup",
    "provides",
    "resolve",
    "resolve_path",
]

_PACKAGE_PREFIX = "_xp_"
# the folder each organism-folder module (a top-level module or a folder's package) came from
_homes: weakref.WeakKeyDictionary[ModuleType, str] = weakref.WeakKeyDictionary()
# loads change sys.modules and sys.meta_path for a moment: one at a time
_lock = threading.RLock()


class ModuleClash(ImportError):
    """A module name is taken in this process by a module from somewhere else.

    Raised for an organism folder imported with short names (see the module docstring) when,
    after that choice, another file took one of its names; and in a worker process whose
    ``sys.modules`` holds another file under the name the parent used.
    """


def folder_package(folder: str | os.PathLike[str]) -> str:
    """The package name a folder's modules get when their short names are taken.

    The same in every process for the same folder: ``_xp_<folder name>_<hash of its path>``.
    """
    real = os.path.realpath(folder)
    slug = re.sub(r"\W", "_", os.path.basename(real)) or "root"
    digest = hashlib.sha256(real.encode("utf-8", "surrogateescape")).hexdigest()[:10]
    return f"{_PACKAGE_PREFIX}{slug}_{digest}"


def provides(folder: str, top: str) -> bool:
    """Whether the folder itself holds the top-level module or package ``top``."""
    return importlib.machinery.PathFinder.find_spec(top, [folder]) is not None


@dataclass(frozen=True, slots=True)
class ImportPath:
    """A module-level object named for import: ``module``, the ``qualname`` inside it, and the
    organism ``folder`` the module comes from (None: found on ``sys.path``).

    ``str()`` gives the ``module:qualname@folder`` form that `parse` reads in any process.
    """

    module: str
    qualname: str
    folder: str | None = None

    @classmethod
    def of(cls, obj: object) -> ImportPath:
        """The path of a module-level class or function, with its folder when its module comes
        from an organism folder."""
        module: str = obj.__module__
        loaded = sys.modules.get(module.partition(".")[0])
        folder = None if loaded is None else _homes.get(loaded)
        return cls(module, obj.__qualname__, folder)  # type: ignore[attr-defined]

    @classmethod
    def parse(cls, text: str) -> ImportPath:
        """Read the ``module:qualname@folder`` form (``@folder`` optional)."""
        module, _, rest = text.partition(":")
        qualname, _, folder = rest.partition("@")
        return cls(module, qualname, folder or None)

    @classmethod
    def from_dotted(cls, dotted: str) -> ImportPath:
        """Read organism.yaml's ``module.name`` form (``pkg.module.name``): the module as the
        organism's folder or ``sys.path`` holds it; see `in_folder`.

        Raises:
            ValueError: not two or more identifiers joined by dots.
        """
        parts = dotted.split(".")
        if len(parts) < 2 or not all(p.isidentifier() and not keyword.iskeyword(p) for p in parts):
            raise ValueError(f"not a dotted path (module.name): {dotted!r}")
        return cls(".".join(parts[:-1]), parts[-1])

    def __str__(self) -> str:
        path = f"{self.module}:{self.qualname}"
        return path if self.folder is None else f"{path}@{self.folder}"


def in_folder(path: ImportPath, folder: str) -> ImportPath:
    """``path`` as an organism file in ``folder`` writes it, made exact for this process.

    A module the folder holds (see `provides`) gets the folder and, when its short names are
    taken, the folder's package prefix (see the module docstring; the choice, made at the
    folder's first import, is kept); with short names the folder goes first on ``sys.path``.
    Any other module is left to ``sys.path``.
    """
    if not provides(folder, path.module.partition(".")[0]):
        return path
    folder = os.path.abspath(folder)
    package = _chosen_package(folder)
    if package is None:
        if folder not in sys.path:
            sys.path.insert(0, folder)
        return ImportPath(path.module, path.qualname, folder)
    return ImportPath(f"{package}.{path.module}", path.qualname, folder)


def load_module(path: ImportPath) -> ModuleType:
    """The module of ``path``, imported if needed (from its folder, when it has one).

    Raises:
        ImportError: the module cannot be imported (`ModuleClash`: another file has its name).
        Exception: whatever the module's own code raises while it is imported.
    """
    if path.folder is None:
        return importlib.import_module(path.module)
    return import_in_folder(path.module, path.folder)


def lookup(module: ModuleType, qualname: str) -> object:
    """The object ``qualname`` (``Outer.Inner`` allowed) names in ``module``.

    Raises:
        AttributeError: a part of the name is missing.
    """
    found: object = module
    for part in qualname.split("."):
        found = getattr(found, part)
    return found


def resolve(path: ImportPath) -> object:
    """The object ``path`` names, importing its module if needed.

    Raises:
        ImportError: the module cannot be imported (`ModuleClash`: another file has its name).
        AttributeError: the module has no such name.
        Exception: whatever the module's own code raises while it is imported.
    """
    return lookup(load_module(path), path.qualname)


def import_in_folder(module_name: str, folder: str) -> ModuleType:
    """Import the module the parent imported from ``folder`` under exactly ``module_name``.

    ``module_name`` is either a short name (``handlers``, ``pkg.handlers``) or one inside the
    folder's package (``_xp_..._<hash>.handlers``); the file comes from ``folder`` in both
    cases, whatever ``sys.path`` says. What a worker uses to find a handler.

    Raises:
        ModuleClash: the short name is taken in this process by another file.
        Exception: whatever the module's own code raises while it is imported.
    """
    folder = os.path.abspath(folder)
    top = module_name.partition(".")[0]
    loaded, home = sys.modules.get(module_name), sys.modules.get(top)
    if loaded is not None and home is not None and _homes.get(home) == folder:
        return loaded  # the common case once imported: no directory listing, no finder
    with _lock:
        if top == folder_package(folder):
            _package_module(top, folder)
            with _redirected(folder, top):
                return importlib.import_module(module_name)
        if (clash := _clash(top, folder)) is not None:
            raise ModuleClash(clash, name=module_name)
        with _redirected(folder, None):
            return importlib.import_module(module_name)


def import_path(obj: object) -> str:
    """``module:qualname`` of a module-level class or function, plus ``@folder`` when its
    module comes from an organism folder; `resolve_path` reads it in any process."""
    return str(ImportPath.of(obj))


def resolve_path(path: str) -> object:
    """The object an `import_path` names, importing its module if needed.

    Raises:
        ImportError: the module cannot be imported (`ModuleClash`: another file has its name).
        AttributeError: the module has no such name.
        Exception: whatever the module's own code raises while it is imported.
    """
    return resolve(ImportPath.parse(path))


# -- choosing and loading ---------------------------------------------------------------------


def _chosen_package(folder: str) -> str | None:
    """None to import the folder with short names, else the name of its own package."""
    package = folder_package(folder)
    if package in sys.modules:
        return package  # chosen before: keep one module per file
    taken = [name for name in _names(folder) if _takes_name(sys.modules.get(name))]
    if not taken or any(_from_folder(sys.modules[name], name, folder) for name in taken):
        return None  # every name is free, or the folder was imported the ordinary way already
    return package


def _names(folder: str) -> set[str]:
    """The top-level modules and packages a folder holds."""
    return {info.name for info in pkgutil.iter_modules([folder])}


def _takes_name(module: ModuleType | None) -> bool:
    """Whether a loaded module holds a name a folder would need for its own module of that
    name: any organism folder's module, any module of the user's; not Python's own modules or
    installed libraries, which a folder's module of the same name never displaced anyway."""
    if module is None:
        return False
    if module in _homes:
        return True
    if module.__name__.partition(".")[0] in sys.stdlib_module_names:
        return False
    file = getattr(module, "__file__", None)
    if file is None:
        return getattr(module, "__path__", None) is not None  # a namespace package, not built in
    return not any(Path(file).is_relative_to(root) for root in _install_roots())


@functools.cache
def _install_roots() -> tuple[str, ...]:
    paths = sysconfig.get_paths()
    return tuple({paths[key] for key in ("stdlib", "platstdlib", "purelib", "platlib")})


def _from_folder(module: ModuleType, name: str, folder: str) -> bool:
    """Whether a module loaded as ``name`` (top-level) is the folder's own file or package."""
    if _homes.get(module) == folder:
        return True
    spec = importlib.machinery.PathFinder.find_spec(name, [folder])
    if spec is None:
        return False
    if spec.has_location and spec.origin is not None:
        return _same_file(getattr(module, "__file__", None), spec.origin)
    ours = os.path.join(folder, name)  # a namespace package: a bare directory
    return any(_same_file(p, ours) for p in getattr(module, "__path__", ()))


def _clash(top: str, folder: str) -> str | None:
    """Why the short name ``top`` cannot be the folder's module in this process, if so."""
    loaded = sys.modules.get(top)
    if loaded is None or _from_folder(loaded, top, folder):
        return None
    spec = importlib.machinery.PathFinder.find_spec(top, [folder])
    ours = spec.origin if spec is not None and spec.origin else os.path.join(folder, top)
    theirs = getattr(loaded, "__file__", None) or list(getattr(loaded, "__path__", ()))
    return (
        f"module name clash: {top!r} is already imported in this process from "
        f"{theirs or 'Python itself'}, but the organism's folder has its own {ours}; Python "
        f"keeps one module per name, so rename one of them or move it into a package with a "
        f"unique name"
    )


def _same_file(a: str | None, b: str) -> bool:
    return a is not None and os.path.realpath(a) == os.path.realpath(b)


def _package_module(package: str, folder: str) -> ModuleType:
    """The folder's own package (made on first use): a module whose ``__path__`` is the folder."""
    module = sys.modules.get(package)
    if module is None:
        spec = importlib.machinery.ModuleSpec(package, None, is_package=True)
        spec.submodule_search_locations = [folder]
        module = importlib.util.module_from_spec(spec)
        module.__doc__ = f"The modules of the organism folder {folder}."
        sys.modules[package] = module
        _homes[module] = folder
    return module


@contextmanager
def _redirected(folder: str, package: str | None) -> Iterator[None]:
    """While the folder's modules are imported, their short names mean the folder's files.

    With a ``package``, short names taken by other folders' modules are hidden for the moment
    and every short name of the folder is an alias of the module in the package; the aliases
    are removed and the hidden modules put back afterwards.
    """
    names = _names(folder)
    hidden: dict[str, ModuleType] = {}
    if package is not None:
        hide = {name for name in names if _takes_name(sys.modules.get(name))}
        for key in [k for k in sys.modules if k.partition(".")[0] in hide]:
            hidden[key] = sys.modules.pop(key)
    before = set(sys.modules) if package is not None else set()
    finder = _FolderFinder(folder, package, names)
    sys.meta_path.insert(0, finder)
    try:
        yield
    finally:
        sys.meta_path.remove(finder)
        if package is None:  # remember which short names are the folder's, siblings included
            for name in names:
                loaded = sys.modules.get(name)
                if (
                    loaded is not None
                    and loaded not in _homes
                    and _from_folder(loaded, name, folder)
                ):
                    _homes[loaded] = folder
        else:
            for key in [k for k in sys.modules if k not in before]:
                if key.partition(".")[0] in names:
                    del sys.modules[key]  # an alias made by the finder
            sys.modules.update(hidden)


class _FolderFinder(importlib.abc.MetaPathFinder):
    """Finds the folder's top-level modules in the folder (short names) or as aliases of the
    modules in the folder's package."""

    def __init__(self, folder: str, package: str | None, names: set[str]) -> None:
        self.folder = folder
        self.package = package
        self.names = names

    def find_spec(
        self,
        fullname: str,
        path: Sequence[str] | None,
        target: ModuleType | None = None,
    ) -> importlib.machinery.ModuleSpec | None:
        if fullname.partition(".")[0] not in self.names:
            return None
        if self.package is None:
            if path is not None:
                return None  # a submodule: found through its parent's __path__, in the folder
            return importlib.machinery.PathFinder.find_spec(fullname, [self.folder])
        module = importlib.import_module(f"{self.package}.{fullname}")
        return importlib.machinery.ModuleSpec(fullname, _Alias(module))


class _Alias(importlib.abc.Loader):
    """Loads a short name as an existing module of the folder's package (no second copy)."""

    def __init__(self, module: ModuleType) -> None:
        self.module = module
        self.spec = module.__spec__

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType:
        return self.module

    def exec_module(self, module: ModuleType) -> None:
        module.__spec__ = self.spec  # the import system gave it the alias's spec: restore it
