"""The loader imports what an organism file names; every problem has its key path and line."""

from __future__ import annotations

import importlib
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from xml_pipeline.config import OrganismConfig, load_config, parse_config
from xml_pipeline.errors import ConfigError, ConfigProblem
from xml_pipeline.loader import ResolvedListener, load_organism, validate_organism

FIXTURES = Path(__file__).parent / "fixtures" / "config"
LOADER = FIXTURES / "loader"
HANDLERS = "cfgfix_loader_handlers"


@pytest.fixture(autouse=True)
def isolated_imports() -> Iterator[None]:
    """Each test starts without the fixture modules imported and leaves sys.path as it was."""
    saved_path = list(sys.path)

    def forget_fixture_modules() -> None:
        for name in [name for name in sys.modules if name.startswith("cfgfix_")]:
            del sys.modules[name]

    forget_fixture_modules()
    yield
    sys.path[:] = saved_path
    forget_fixture_modules()


def organism(*listeners: tuple[str, str], cpu_bound: bool = False) -> str:
    """Organism YAML whose i-th listener (from line 4 + 4*i) names a payload class and handler."""
    lines = ["organism:", "  name: loader-test", "listeners:"]
    for i, (payload_class, handler) in enumerate(listeners):
        lines += [
            f"  - name: listener{i}",
            f"    payload_class: {payload_class}",
            f"    handler: {handler}",
            f"    cpu_bound: {str(cpu_bound).lower()}",
        ]
    return "\n".join(lines) + "\n"


def config_in(folder: Path, text: str) -> OrganismConfig:
    return parse_config(text, file=str(folder / "organism.yaml"))


def import_problems(*listeners: tuple[str, str], cpu_bound: bool = False) -> list[ConfigProblem]:
    with pytest.raises(ConfigError) as info:
        load_organism(config_in(LOADER, organism(*listeners, cpu_bound=cpu_bound)))
    assert all(p.file == str((LOADER / "organism.yaml").absolute()) for p in info.value.problems)
    return info.value.problems


def only_import_problem(*listeners: tuple[str, str], cpu_bound: bool = False) -> ConfigProblem:
    found = import_problems(*listeners, cpu_bound=cpu_bound)
    assert len(found) == 1, found
    return found[0]


GREETING = f"{HANDLERS}.Greeting"
NUMBERS = f"{HANDLERS}.Numbers"


def test_resolves_payload_classes_and_handlers_in_order() -> None:
    config, resolved = validate_organism(LOADER / "organism.yaml")
    module = sys.modules[HANDLERS]
    assert [r.name for r in resolved] == ["greeter", "cruncher"]
    assert resolved[0] == ResolvedListener(config.listeners[0], module.Greeting, module.greet)
    assert resolved[1].payload_class is module.Numbers
    assert resolved[1].handler is module.crunch


def test_users_own_imports_get_the_very_same_classes() -> None:
    _, resolved = validate_organism(LOADER / "organism.yaml")
    users_module = importlib.import_module(HANDLERS)
    assert resolved[0].payload_class is users_module.Greeting
    assert users_module.__file__ == str(LOADER.absolute() / f"{HANDLERS}.py")


def test_organism_folder_goes_first_on_sys_path_once() -> None:
    config = load_config(LOADER / "organism.yaml")
    load_organism(config)
    load_organism(config)
    assert sys.path[0] == str(LOADER.absolute())
    assert sys.path.count(str(LOADER.absolute())) == 1


def test_missing_module_names_the_folder_searched() -> None:
    problem = only_import_problem(("cfgfix_nowhere_at_all.Greeting", f"{HANDLERS}.greet"))
    assert (problem.key_path, problem.line) == ("listeners[0].payload_class", 5)
    assert "module 'cfgfix_nowhere_at_all' not found" in problem.message
    assert str(LOADER.absolute()) in problem.message


def test_misspelled_module_suggests_a_module_of_the_folder() -> None:
    problem = only_import_problem((GREETING, "cfgfix_loader_handler.greet"))
    assert (problem.key_path, problem.line) == ("listeners[0].handler", 6)
    assert f"did you mean {HANDLERS!r}?" in problem.message


def test_missing_attribute_suggests_a_close_name() -> None:
    problem = only_import_problem((GREETING, f"{HANDLERS}.gret"))
    assert (problem.key_path, problem.line) == ("listeners[0].handler", 6)
    assert "has no 'gret'; did you mean 'greet'?" in problem.message


def test_exception_while_importing_names_its_type_and_message() -> None:
    problem = only_import_problem(("cfgfix_loader_raising.X", "cfgfix_loader_raising.handle"))
    assert (problem.key_path, problem.line) == ("listeners[0].payload_class", 5)
    assert "RuntimeError: boom while importing" in problem.message
    assert "cfgfix_loader_raising.py:3" in problem.message


def test_import_error_inside_a_module_is_not_mistaken_for_a_missing_module() -> None:
    problem = only_import_problem(("cfgfix_loader_bad_import.X", f"{HANDLERS}.greet"))
    assert problem.key_path == "listeners[0].payload_class"
    assert "raised ModuleNotFoundError" in problem.message
    assert "cfgfix_not_installed_anywhere" in problem.message


def test_payload_class_must_be_a_payload_class() -> None:
    problem = only_import_problem((f"{HANDLERS}.PlainData", f"{HANDLERS}.greet"))
    assert (problem.key_path, problem.line) == ("listeners[0].payload_class", 5)
    assert "not a @payload class; decorate it with @payload" in problem.message


def test_payload_class_must_be_a_class() -> None:
    problem = only_import_problem((f"{HANDLERS}.greet", f"{HANDLERS}.greet"))
    assert (problem.key_path, problem.line) == ("listeners[0].payload_class", 5)
    assert "is not a class" in problem.message


def test_handler_must_be_callable() -> None:
    problem = only_import_problem((GREETING, f"{HANDLERS}.not_callable"))
    assert (problem.key_path, problem.line) == ("listeners[0].handler", 6)
    assert "is not callable" in problem.message


def test_every_import_problem_is_reported_at_once() -> None:
    found = import_problems(
        (f"{HANDLERS}.PlainData", f"{HANDLERS}.gret"),
        ("cfgfix_loader_raising.X", "cfgfix_loader_raising.y"),
        (GREETING, f"{HANDLERS}.not_callable"),
    )
    assert [(p.key_path, p.line) for p in found] == [
        ("listeners[0].payload_class", 5),
        ("listeners[0].handler", 6),
        ("listeners[1].payload_class", 9),  # a module that fails is reported once
        ("listeners[2].handler", 14),
    ]


def test_same_module_name_in_two_organism_folders_is_a_clash() -> None:
    validate_organism(FIXTURES / "clash_a" / "organism.yaml")
    with pytest.raises(ConfigError) as info:
        validate_organism(FIXTURES / "clash_b" / "organism.yaml")
    [problem] = info.value.problems
    assert (problem.key_path, problem.line) == ("listeners[0].payload_class", 5)
    assert str(FIXTURES.absolute() / "clash_a" / "cfgfix_clash_handlers.py") in problem.message
    assert str(FIXTURES.absolute() / "clash_b" / "cfgfix_clash_handlers.py") in problem.message
    assert "rename one" in problem.message
    assert sys.modules["cfgfix_clash_handlers"].SIDE == "a"


def test_module_shadowed_by_an_earlier_sys_path_entry_is_a_clash() -> None:
    sys.path[:0] = [str(FIXTURES.absolute() / "clash_a"), str(FIXTURES.absolute() / "clash_b")]
    with pytest.raises(ConfigError, match="module name clash"):
        validate_organism(FIXTURES / "clash_b" / "organism.yaml")


@pytest.mark.parametrize(
    ("handler", "why"),
    [
        ("crunch_lambda", "it is a lambda"),
        ("crunch_closure", "closure (_make_closure.<locals>.crunch_closure)"),
        ("crunch_traced", f"{HANDLERS}.crunch_impl (the name it carries) is a different object"),
        ("crunch_in_main", "defined in __main__"),
    ],
)
def test_cpu_bound_handler_must_be_importable_by_a_worker_process(handler: str, why: str) -> None:
    problem = only_import_problem((NUMBERS, f"{HANDLERS}.{handler}"), cpu_bound=True)
    assert (problem.key_path, problem.line) == ("listeners[0].handler", 6)
    assert "worker process" in problem.message
    assert why in problem.message
    assert "top level of an importable module" in problem.message


def test_inline_handlers_need_not_be_importable_by_name() -> None:
    resolved = load_organism(config_in(LOADER, organism((NUMBERS, f"{HANDLERS}.crunch_closure"))))
    assert resolved[0].handler is sys.modules[HANDLERS].crunch_closure


def test_validate_reports_config_problems_before_importing_anything(tmp_path: Path) -> None:
    sys.path.insert(0, str(LOADER.absolute()))  # the module could be imported, were it asked
    path = tmp_path / "organism.yaml"
    path.write_text(organism(("cfgfix_loader_raising.X", "cfgfix_loader_raising.y")) + "extra: 1\n")
    with pytest.raises(ConfigError) as info:
        validate_organism(path)
    assert [(p.key_path, p.line) for p in info.value.problems] == [("extra", 8)]
    assert "cfgfix_loader_raising" not in sys.modules
