"""The floors of the package and the allowed import directions, read from the source (ast).

    _errors, _settings           imported by everyone; _settings imports nothing of ours but _errors
    _wire/                       the XML layer: no I/O, never imports _runtime/ or backends/
    backends/                    shared state: never imports _wire/ or _runtime/
    _handlers, _imports          the handler contract, and user code imported by path: the
                                 runtime uses both; they import the wire layer only
    _runtime/                    the moving parts: never reads organism.yaml (_config, yaml)
    metrics/                     observes the runtime through its hooks; the runtime never
                                 imports it, and it never imports the organism or its file
    control/                     the control plane over metrics and the runtime's hooks; nothing
                                 below it imports it, and it never imports the organism either
    _config, _loader, ...        the organism's glue, above them
    cli, testing, pytest_plugin  thin layers over the public API; the library never imports them

Every import counts, those under ``if TYPE_CHECKING:`` included, and no two modules may import
each other even indirectly.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1] / "xml_pipeline"


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imports(path: Path) -> set[str]:
    """The modules ``path`` imports (absolute names; ``from x import y`` counts x and x.y)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    package = _module_name(path) if path.name == "__init__.py" else _module_name(path.parent)
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return found


MODULES = {_module_name(path): _imports(path) for path in ROOT.rglob("*.py")}


def _ours(name: str) -> str | None:
    """The module of ours that ``name`` is (or is in), if any."""
    while name:
        if name in MODULES:
            return name
        name = name.rpartition(".")[0]
    return None


GRAPH = {
    module: {m for name in names if (m := _ours(name)) is not None and m != module}
    for module, names in MODULES.items()
}


def _in(module: str, floor: str) -> bool:
    return module == floor or module.startswith(floor + ".")


_ABOVE = ("xml_pipeline._config", "xml_pipeline._loader", "xml_pipeline._organism")
_OBSERVERS = ("xml_pipeline.metrics", "xml_pipeline.control")
RULES: list[tuple[str, tuple[str, ...], str]] = [
    (
        "xml_pipeline._wire",
        ("xml_pipeline._runtime", "xml_pipeline.backends", "xml_pipeline._handlers", *_OBSERVERS),
        "the XML layer",
    ),
    (
        "xml_pipeline.backends",
        ("xml_pipeline._wire", "xml_pipeline._runtime", "xml_pipeline._handlers", *_OBSERVERS),
        "the backends",
    ),
    (
        "xml_pipeline._handlers",
        (*_ABOVE, "xml_pipeline._runtime", "xml_pipeline.backends", *_OBSERVERS),
        "the handler contract",
    ),
    (
        "xml_pipeline._imports",
        (*_ABOVE, "xml_pipeline._runtime", "xml_pipeline.backends", *_OBSERVERS),
        "importing user code",
    ),
    ("xml_pipeline._runtime", (*_ABOVE, *_OBSERVERS), "the runtime"),
    ("xml_pipeline.metrics", (*_ABOVE, "xml_pipeline.control"), "the metrics"),
    ("xml_pipeline.control", _ABOVE, "the control plane"),
]


@pytest.mark.parametrize(("floor", "forbidden", "what"), RULES, ids=[r[2] for r in RULES])
def test_a_floor_never_imports_what_sits_above_or_beside_it(
    floor: str, forbidden: tuple[str, ...], what: str
) -> None:
    wrong = sorted(
        f"{module} imports {target}"
        for module, targets in GRAPH.items()
        if _in(module, floor)
        for target in targets
        if any(_in(target, f) for f in forbidden)
    )
    assert wrong == [], f"{what} must not import {forbidden}"


def test_outside_backends_only_the_protocol_and_the_factory_are_imported() -> None:
    """Which class serves which ``type``, which backends outlive the process and how each is
    named live in ``backends/factory.py``: the organism and the runtime name no backend class
    (the ``backends`` package re-exports them for users)."""
    allowed = {
        "xml_pipeline.backends",
        "xml_pipeline.backends.base",
        "xml_pipeline.backends.factory",
    }
    wrong = sorted(
        f"{module} imports {target}"
        for module, targets in GRAPH.items()
        if not _in(module, "xml_pipeline.backends")
        for target in targets
        if _in(target, "xml_pipeline.backends") and target not in allowed
    )
    assert wrong == []


def test_in_the_runtime_only_the_registry_holds_the_backend() -> None:
    """The registry is the one door to shared state (issue 10, item 3): no other module of the
    runtime names the `Backend` protocol (its records, such as `DeadLetter`, may travel)."""
    holders = {
        module
        for module, names in MODULES.items()
        if _in(module, "xml_pipeline._runtime")
        and {"xml_pipeline.backends.base.Backend", "xml_pipeline.backends.Backend"} & names
    }
    assert holders - {"xml_pipeline._runtime.registry"} == set()


def test_the_runtime_never_reads_yaml() -> None:
    wrong = sorted(
        module for module, names in MODULES.items() if _in(module, "xml_pipeline._runtime")
        and any(name == "yaml" or name.startswith("yaml.") for name in names)
    )  # fmt: skip
    assert wrong == []


def test_settings_and_errors_import_nothing_of_ours_but_errors() -> None:
    assert GRAPH["xml_pipeline._errors"] == set()
    assert GRAPH["xml_pipeline._settings"] <= {"xml_pipeline._errors"}


def test_the_metrics_settings_import_nothing_but_settings_and_errors() -> None:
    """The config reader imports them: they must not pull the collector or a sink's library."""
    assert GRAPH["xml_pipeline.metrics.settings"] <= {
        "xml_pipeline._errors",
        "xml_pipeline._settings",
    }


def test_optional_libraries_are_imported_by_their_sink_only() -> None:
    """prometheus_client and opentelemetry are extras: only the module of their sink imports
    them (opened on demand), so the package imports without them."""
    optional = {"prometheus_client": ("prometheus",), "opentelemetry": ("otel", "otel_trace")}
    wrong = sorted(
        f"{module} imports {name}"
        for module, names in MODULES.items()
        for name in names
        for library, homes in optional.items()
        if name.split(".")[0] == library
        and module not in {f"xml_pipeline.metrics.{home}" for home in homes}
    )
    assert wrong == []


def test_the_library_never_imports_its_cli_or_testing_helpers() -> None:
    top = {
        "xml_pipeline.cli",
        "xml_pipeline.testing",
        "xml_pipeline.pytest_plugin",
        "xml_pipeline.__main__",
    }
    cli_parts = {
        "xml_pipeline._cli_control",
        "xml_pipeline._cli_dlq",
        "xml_pipeline._cli_run",
    }  # the CLI's own modules
    wrong = sorted(
        f"{module} imports {target}"
        for module, targets in GRAPH.items()
        if module not in top | cli_parts
        for target in targets & (top | cli_parts)
    )
    assert wrong == []


def test_only_the_pytest_plugin_imports_pytest() -> None:
    """pytest is a test dependency: the library, and the testing helpers (usable from any test
    runner), must import without it."""
    wrong = sorted(
        module
        for module, names in MODULES.items()
        if module != "xml_pipeline.pytest_plugin"
        and any(name == "pytest" or name.startswith(("pytest.", "_pytest")) for name in names)
    )
    assert wrong == []


def test_no_import_cycles() -> None:
    """Depth-first search over the whole graph; a back edge is a cycle (package __init__ files,
    which only re-export, are left out: importing a submodule runs them first by design)."""
    graph = {
        m: {t for t in targets if not _is_package(t)}
        for m, targets in GRAPH.items()
        if not _is_package(m)
    }
    state: dict[str, int] = {}
    cycles: list[list[str]] = []

    def visit(module: str, path: list[str]) -> None:
        state[module] = 1
        for target in sorted(graph.get(module, ())):
            if state.get(target) == 1:
                cycles.append([*path[path.index(target) :], target])
            elif target not in state:
                visit(target, [*path, target])
        state[module] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])
    assert cycles == []


def _is_package(module: str) -> bool:
    return (ROOT.parent / module.replace(".", "/") / "__init__.py").exists()


def test_the_rules_see_every_floor() -> None:
    """A guard for this test itself: the floors it names exist and hold modules."""
    floors = ("xml_pipeline._wire", "xml_pipeline._runtime", "xml_pipeline.backends")
    for floor in (*floors, *_OBSERVERS):
        assert any(_in(module, floor) and module != floor for module in MODULES), floor


def test_every_folder_of_modules_is_a_package() -> None:
    """setuptools' package finder sees only folders with an __init__.py: a folder without one
    works from a source checkout (an implicit namespace package) and is missing from every
    installed wheel."""
    folders = {path.parent for path in ROOT.rglob("*.py") if "__pycache__" not in path.parts}
    assert sorted(str(f) for f in folders if not (f / "__init__.py").exists()) == []


def test_the_architecture_document_names_every_module() -> None:
    """ARCHITECTURE.md says in one line what each module holds: a module added without a line
    there (or a line left for a module that is gone) fails here."""
    text = (ROOT.parent / "ARCHITECTURE.md").read_text()
    listed = set(re.findall(r"^\| `([\w/.]+\.py)` \|", text, flags=re.M))
    modules = {
        str(path.relative_to(ROOT)).replace("\\", "/")
        for path in ROOT.rglob("*.py")
        if "__pycache__" not in path.parts
        and not (path.name == "__init__.py" and path.parent != ROOT)
    }
    assert listed == modules
