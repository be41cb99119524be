"""The loader imports what an organism file names; every problem has its key path and line."""

from __future__ import annotations

import hashlib
import importlib
import inspect
import subprocess
import sys
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import xml_pipeline
from xml_pipeline import Listener, Organism
from xml_pipeline._config import OrganismConfig, load_config, parse_config
from xml_pipeline._errors import ConfigError, ConfigProblem
from xml_pipeline._imports import ImportPath, folder_package, import_path, in_folder, resolve
from xml_pipeline._loader import (
    cpu_bound_call_warnings,
    handler_signature_problem,
    load_organism,
    meta_calls,
    validate_organism,
)

FIXTURES = Path(__file__).parent / "fixtures" / "config"
LOADER = FIXTURES / "loader"
ORGANISMS = Path(__file__).resolve().parents[1] / "organisms"
LIBRARY = str(Path(xml_pipeline.__file__).resolve().parent)
HANDLERS = "cfgfix_loader_handlers"
# short module names that organism folders of these tests use, besides the cfgfix_ ones
SHORT_NAMES = ("handlers", "models")


def _ours(name: str) -> bool:
    return name.startswith(("cfgfix_", "_xp_")) or name.partition(".")[0] in SHORT_NAMES


@pytest.fixture(autouse=True)
def isolated_imports() -> Iterator[None]:
    """Each test starts without organism modules imported (as in a fresh process) and leaves
    sys.path, sys.meta_path and sys.modules as it found them."""
    saved_path, saved_meta_path = list(sys.path), list(sys.meta_path)
    saved = {name: sys.modules.pop(name) for name in [n for n in sys.modules if _ours(n)]}
    yield
    for name in [n for n in sys.modules if _ours(n)]:
        del sys.modules[name]
    sys.modules.update(saved)
    sys.path[:] = saved_path
    assert sys.meta_path == saved_meta_path, "the loader left a finder on sys.meta_path"


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
    """The loader turns each listener of the file into the `Listener` the runtime takes."""
    _, resolved = validate_organism(LOADER / "organism.yaml")
    module = sys.modules[HANDLERS]
    assert [r.name for r in resolved] == ["greeter", "cruncher"]
    assert resolved[0] == Listener("greeter", module.Greeting, module.greet, peers=("cruncher",))
    assert resolved[1] == Listener("cruncher", module.Numbers, module.crunch, cpu_bound=True)


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


def test_same_module_name_in_two_organism_folders_loads_both_the_first_keeps_the_name() -> None:
    _, first = validate_organism(FIXTURES / "clash_a" / "organism.yaml")
    _, second = validate_organism(FIXTURES / "clash_b" / "organism.yaml")
    short = sys.modules["cfgfix_clash_handlers"]
    assert short.SIDE == "a" and first[0].payload_class is short.Ping
    other = sys.modules[second[0].payload_class.__module__]
    assert other.SIDE == "b" and second[0].payload_class is not short.Ping
    assert other.__name__ == f"{folder_package(FIXTURES / 'clash_b')}.cfgfix_clash_handlers"
    assert str(FIXTURES.absolute() / "clash_b") not in sys.path, "only the first goes on sys.path"


def test_the_organisms_own_folder_wins_over_an_earlier_sys_path_entry() -> None:
    sys.path[:0] = [str(FIXTURES.absolute() / "clash_a"), str(FIXTURES.absolute() / "clash_b")]
    _, resolved = validate_organism(FIXTURES / "clash_b" / "organism.yaml")
    assert sys.modules["cfgfix_clash_handlers"].SIDE == "b"
    assert resolved[0].payload_class is sys.modules["cfgfix_clash_handlers"].Ping


def test_a_name_taken_after_the_folder_chose_short_names_is_a_clash(tmp_path: Path) -> None:
    """The one clash left: the folder's first module was imported the ordinary way (short
    names), then another folder's file took the name of its second module."""
    ours, theirs = tmp_path / "ours", tmp_path / "theirs"
    write_module(ours, "cfgfix_first", "VALUE = 1\n")
    write_module(ours, "cfgfix_second", PING_MODULE)
    write_module(theirs, "cfgfix_second", PING_MODULE)
    sys.path[:0] = [str(ours), str(theirs)]
    importlib.import_module("cfgfix_first")  # the user's own import: short names from ours
    sys.path.remove(str(ours))
    importlib.import_module("cfgfix_second")  # ...and this one from theirs
    (ours / "organism.yaml").write_text(organism(("cfgfix_second.Ping", "cfgfix_second.ping")))
    with pytest.raises(ConfigError) as info:
        validate_organism(ours / "organism.yaml")
    [problem] = info.value.problems
    assert (problem.key_path, problem.line) == ("listeners[0].payload_class", 5)
    assert "module name clash" in problem.message and "rename one" in problem.message
    assert str(theirs / "cfgfix_second.py") in problem.message


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


# -- two organism folders with the same module names (issue 9, item 21) -----------------------

PING_MODULE = """\
from dataclasses import dataclass
from typing import Any

from xml_pipeline._wire.payloads import payload


@payload
@dataclass
class Ping:
    text: str


async def ping(message: Ping, meta: Any) -> None:
    return None
"""


def write_module(folder: Path, name: str, text: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.py"
    path.write_text(textwrap.dedent(text))
    return path


# Each side's models.py defines Job and Result with different fields; handlers.py imports them
# from the sibling module by its short name, as users write it. `back` runs in a worker process
# and checks that the payload was bound to this very folder's class.
SIDES: dict[str, dict[str, str]] = {
    "a": {
        "fields": "text: str",
        "result": "text: str",
        "answer": "Result(side=SIDE, text=msg.text.upper())",
    },
    "b": {
        "fields": "number: int",
        "result": "value: int",
        "answer": "Result(side=SIDE, value=msg.number * 2)",
    },
}


def two_side_folder(root: Path, side: str) -> Path:
    """An organism folder with handlers.py and models.py, both names shared with the other."""
    folder = root / f"side_{side}"
    spec = SIDES[side]
    write_module(
        folder,
        "models",
        f"""
        from dataclasses import dataclass

        from xml_pipeline import payload

        SIDE = {side!r}


        @payload
        @dataclass
        class Job:
            {spec["fields"]}


        @payload
        @dataclass
        class Result:
            side: str
            {spec["result"]}
        """,
    )
    write_module(
        folder,
        "handlers",
        f"""
        from typing import Any

        import models
        from models import SIDE, Job, Result

        from xml_pipeline import HandlerResponse


        async def front(msg: Any, meta: Any) -> HandlerResponse:
            if isinstance(msg, Job):
                return HandlerResponse(msg, to="back")
            return HandlerResponse.respond(msg)


        def back(msg: Job, meta: Any) -> HandlerResponse:
            assert type(msg) is Job is models.Job, (type(msg), Job)
            return HandlerResponse.respond({spec["answer"]})
        """,
    )
    (folder / "organism.yaml").write_text(
        textwrap.dedent(
            f"""\
            organism:
              name: side-{side}
            process_pool:
              workers: 1
            listeners:
              - name: front
                payload_class: handlers.Job
                handler: handlers.front
                peers: [back]
              - name: back
                payload_class: handlers.Job
                handler: handlers.back
                cpu_bound: true
            """
        )
    )
    return folder


@pytest.mark.anyio
@pytest.mark.parametrize("order", [("hello", "hasher"), ("hasher", "hello")])
async def test_bundled_hello_and_hasher_run_side_by_side_in_one_process(
    order: tuple[str, str],
) -> None:
    orgs = {name: Organism.from_yaml(ORGANISMS / name / "organism.yaml") for name in order}
    first = importlib.import_module("handlers")
    assert first.__file__ == str(ORGANISMS / order[0] / "handlers.py")
    hello, hasher = orgs["hello"], orgs["hasher"]
    greeting = hello.listeners[0].payload_class
    job = hasher.listeners[0].payload_class
    # `import handlers` gets the module of whichever was loaded first
    assert (greeting is getattr(first, "Greeting", None)) == (order[0] == "hello")
    assert (job is getattr(first, "HashJob", None)) == (order[0] == "hasher")
    async with hello, hasher:
        reply = await hello.request("greeter", greeting(name="Ada"), timeout=20)
        digest = await hasher.request("desk", job(data="abc", rounds=1000), timeout=60)
    assert reply.message == "HELLO, ADA!"
    expected = hashlib.pbkdf2_hmac("sha256", b"abc", b"xml-pipeline", 1000).hex()
    assert (digest.hex, digest.rounds) == (expected, 1000)


@pytest.mark.anyio
async def test_two_folders_with_the_same_module_names_and_class_names_both_work(
    tmp_path: Path,
) -> None:
    folder_a, folder_b = two_side_folder(tmp_path, "a"), two_side_folder(tmp_path, "b")
    org_a = Organism.from_yaml(folder_a / "organism.yaml")
    org_b = Organism.from_yaml(folder_b / "organism.yaml")
    job_a, job_b = org_a.listeners[0].payload_class, org_b.listeners[0].payload_class
    assert job_a.__name__ == job_b.__name__ == "Job" and job_a is not job_b
    async with org_a, org_b:
        result_a = await org_a.request("front", job_a(text="hi"), timeout=60)
        result_b = await org_b.request("front", job_b(number=21), timeout=60)
    assert (result_a.side, result_a.text) == ("a", "HI")
    assert (result_b.side, result_b.value) == ("b", 42)
    # the first folder loaded keeps the short names: a user's own imports get its modules
    assert importlib.import_module("handlers").Job is job_a
    assert importlib.import_module("models").Result is type(result_a)
    assert type(result_b).__module__ == f"{folder_package(folder_b)}.models"


def test_a_folder_the_user_imported_first_keeps_the_short_names(tmp_path: Path) -> None:
    folder_a, folder_b = two_side_folder(tmp_path, "a"), two_side_folder(tmp_path, "b")
    sys.path.insert(0, str(folder_b))
    users_handlers = importlib.import_module("handlers")  # b's, before any organism loads
    _, resolved_a = validate_organism(folder_a / "organism.yaml")
    _, resolved_b = validate_organism(folder_b / "organism.yaml")
    assert resolved_b[0].payload_class is users_handlers.Job
    assert resolved_a[0].payload_class.__module__ == f"{folder_package(folder_a)}.models"
    assert importlib.import_module("handlers") is users_handlers


def test_loading_the_same_folder_again_gives_the_same_classes(tmp_path: Path) -> None:
    folder_a, folder_b = two_side_folder(tmp_path, "a"), two_side_folder(tmp_path, "b")
    first = [validate_organism(f / "organism.yaml")[1] for f in (folder_a, folder_b)]
    again = [validate_organism(f / "organism.yaml")[1] for f in (folder_b, folder_a)][::-1]
    for before, after in zip(first, again, strict=True):
        assert [r.payload_class for r in before] == [r.payload_class for r in after]
        assert [r.handler for r in before] == [r.handler for r in after]


@pytest.mark.parametrize("side", ["a", "b"])
def test_a_dotted_path_of_the_file_and_a_workers_import_path_are_one_form(
    tmp_path: Path, side: str
) -> None:
    """organism.yaml's ``module.name``, placed in its folder, is the very `ImportPath` a worker
    gets for the handler it names (a: short names; b: the folder's own package), and the one
    resolver gives back what the file names (here a class handlers.py imports from models.py)."""
    folders = {s: two_side_folder(tmp_path, s) for s in ("a", "b")}
    loaded = {s: validate_organism(folders[s] / "organism.yaml") for s in ("a", "b")}
    config, listeners = loaded[side]
    for written, listener in zip(config.listeners, listeners, strict=True):
        path = in_folder(ImportPath.from_dotted(written.handler), str(config.folder))
        assert path == ImportPath.of(listener.handler)
        assert path == ImportPath.parse(import_path(listener.handler))
        assert path.folder == str(folders[side])
        assert resolve(path) is listener.handler
        path = in_folder(ImportPath.from_dotted(written.payload_class), str(config.folder))
        assert path.folder == str(folders[side])
        assert resolve(path) is listener.payload_class


@pytest.mark.parametrize("text", ["Greeting", "handlers.", ".greet", "handlers.class", "1h.x", ""])
def test_a_dotted_path_that_is_not_module_dot_name_is_refused(text: str) -> None:
    with pytest.raises(ValueError, match="not a dotted path"):
        ImportPath.from_dotted(text)


RESOLVE_IN_A_FRESH_PROCESS = """
import sys
from xml_pipeline._imports import resolve_path
handler = resolve_path(sys.argv[1])
job = resolve_path(sys.argv[2])
assert job is sys.modules[handler.__module__].Job, "the class the handler module sees"
print(sys.modules[handler.__module__].__file__)
print(sys.modules[job.__module__].__file__)
"""


@pytest.mark.parametrize("side", ["a", "b"])
def test_a_worker_imports_a_handler_by_its_file_whatever_its_sys_path(
    tmp_path: Path, side: str
) -> None:
    """What a cpu_bound worker does with an import path, in a fresh process whose sys.path
    has the *other* folder first: it still gets this folder's files (a: short names; b: the
    folder's own package)."""
    folders = {s: two_side_folder(tmp_path, s) for s in ("a", "b")}
    resolved = {s: validate_organism(folders[s] / "organism.yaml")[1] for s in ("a", "b")}
    back = resolved[side][1]
    other = folders["b" if side == "a" else "a"]
    paths = [import_path(back.handler), import_path(back.payload_class)]
    assert all(path.endswith(f"@{folders[side]}") for path in paths)
    done = subprocess.run(
        [sys.executable, "-c", RESOLVE_IN_A_FRESH_PROCESS, *paths],
        env={"PYTHONPATH": str(other), "PATH": ""},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == [
        str(folders[side] / "handlers.py"),
        str(folders[side] / "models.py"),
    ]


def test_loading_leaves_no_alias_of_the_second_folder_under_a_short_name(tmp_path: Path) -> None:
    folder_a, folder_b = two_side_folder(tmp_path, "a"), two_side_folder(tmp_path, "b")
    validate_organism(folder_a / "organism.yaml")
    short = {name: sys.modules[name] for name in SHORT_NAMES}
    validate_organism(folder_b / "organism.yaml")
    assert {name: sys.modules[name] for name in SHORT_NAMES} == short
    package = folder_package(folder_b)
    assert sys.modules[f"{package}.handlers"].models is sys.modules[f"{package}.models"]


# -- handler signatures (issue 9, item 18) -----------------------------------------------------


@pytest.mark.parametrize(
    ("handler", "why"),
    [
        ("takes_one", "takes 1 positional argument; a handler is called as"),
        ("takes_none", "takes no positional arguments; a handler is called as"),
        ("takes_three", "requires 3 positional arguments (greeting, meta, extra)"),
        ("keyword_only", "requires keyword-only argument 'flag'"),
        ("generator", "is a generator function"),
        ("async_generator", "is a generator function"),
    ],
)
def test_a_handler_that_cannot_be_called_with_payload_and_metadata_is_reported(
    handler: str, why: str
) -> None:
    problem = only_import_problem((GREETING, f"{HANDLERS}.{handler}"))
    assert (problem.key_path, problem.line) == ("listeners[0].handler", 6)
    assert problem.message.startswith(f"{HANDLERS}.{handler} (")
    assert why in problem.message
    assert "handler(payload, metadata)" in problem.message
    source = LOADER.absolute() / f"{HANDLERS}.py"
    line = inspect.getsourcelines(getattr(importlib.import_module(HANDLERS), handler))[1]
    assert f"({source}:{line})" in problem.message, "where to fix it"


@pytest.mark.parametrize(
    "handler", ["sync_handler", "with_optional_extra", "star_args", "callable_instance", "greet"]
)
def test_handlers_callable_with_payload_and_metadata_load(handler: str) -> None:
    load_organism(config_in(LOADER, organism((GREETING, f"{HANDLERS}.{handler}"))))


_KINDS = st.tuples(
    st.integers(0, 2),  # positional-only
    st.integers(0, 3),  # positional-or-keyword
    st.integers(0, 5),  # how many of the positional ones (the last) have a default
    st.booleans(),  # *args
    st.lists(st.booleans(), max_size=2),  # keyword-only, each with a default or not
    st.booleans(),  # **kwargs
    st.booleans(),  # async def
)


def _function(kinds: tuple[int, int, int, bool, list[bool], bool, bool]) -> Callable[..., Any]:
    posonly, positional, defaults, varargs, keyword_only, kwargs, is_async = kinds
    names = [f"p{i}" for i in range(posonly + positional)]
    first_default = max(len(names) - defaults, 0)
    params = [f"{n}=None" if i >= first_default else n for i, n in enumerate(names)]
    if posonly:
        params.insert(posonly, "/")
    if varargs:
        params.append("*args")
    elif keyword_only:
        params.append("*")
    params += [f"k{i}=None" if default else f"k{i}" for i, default in enumerate(keyword_only)]
    if kwargs:
        params.append("**kwargs")
    namespace: dict[str, Any] = {}
    exec(f"{'async ' if is_async else ''}def handler({', '.join(params)}): return None", namespace)
    return namespace["handler"]  # type: ignore[no-any-return]


@settings(max_examples=300, deadline=None)
@given(_KINDS)
def test_signature_check_agrees_with_calling_the_handler(
    kinds: tuple[int, int, int, bool, list[bool], bool, bool],
) -> None:
    """A handler passes the check exactly when handler(payload, metadata) can be called."""
    handler = _function(kinds)
    try:
        result = handler(object(), object())
    except TypeError:
        callable_so = False
    else:
        callable_so = True
        if inspect.iscoroutine(result):
            result.close()
    assert (handler_signature_problem(handler) is None) == callable_so


def test_validate_command_reports_a_bad_handler_signature_and_exits_2(tmp_path: Path) -> None:
    write_module(
        tmp_path, "handlers", PING_MODULE + "\n\nasync def greet(msg: Ping) -> None:\n    pass\n"
    )
    (tmp_path / "organism.yaml").write_text(organism(("handlers.Ping", "handlers.greet")))
    done = subprocess.run(
        [sys.executable, "-m", "xml_pipeline", "validate", str(tmp_path / "organism.yaml")],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2, done.stderr
    assert f"{tmp_path / 'organism.yaml'}:6: listeners[0].handler: handlers.greet (" in done.stderr
    assert (
        "takes 1 positional argument; a handler is called as handler(payload, metadata)"
        in done.stderr
    )


# -- payload classes that fail at import (issue 9, item 19) ------------------------------------


@pytest.mark.parametrize(
    ("module", "cls", "error"),
    [
        ("cfgfix_loader_not_a_dataclass", "Order", "must be a dataclass"),
        ("cfgfix_loader_bad_field", "Point", "complex"),
    ],
)
def test_a_payload_class_failing_at_import_is_reported_at_every_listener_using_its_module(
    module: str, cls: str, error: str
) -> None:
    found = import_problems(
        (f"{module}.{cls}", f"{HANDLERS}.greet"),  # its class
        (GREETING, f"{HANDLERS}.greet"),  # not its module: fine
        (GREETING, f"{module}.handle"),  # its handler
        (f"{module}.{cls}", f"{module}.handle"),  # both: reported once
    )
    assert [(p.key_path, p.line) for p in found] == [
        ("listeners[0].payload_class", 5),
        ("listeners[2].handler", 14),
        ("listeners[3].payload_class", 17),
    ]
    source = LOADER.absolute() / f"{module}.py"
    lines = source.read_text().splitlines()
    at = {i + 1 for i, text in enumerate(lines) if text in ("@payload", f"class {cls}:")}
    for problem in found:
        assert "PayloadTypeError" in problem.message and error in problem.message
        assert any(f"{source}:{line}" in problem.message for line in at), problem.message
        assert LIBRARY not in problem.message, "the place is the user's class, not the library"


CPU_META_CALL = FIXTURES.parent / "cpu_meta_call"


def test_a_cpu_bound_handler_calling_its_metadata_call_is_warned_about_not_refused() -> None:
    config, listeners = validate_organism(CPU_META_CALL / "organism.yaml")
    warnings = cpu_bound_call_warnings(config, listeners)
    assert [(w.key_path, w.line) for w in warnings] == [("listeners[1].handler", 11)]
    source = (CPU_META_CALL / "cfgfix_cpu_meta_call.py").absolute()
    call_line = (
        source.read_text().splitlines().index('        helped = await md.call("helper", msg)')
    )
    message = warnings[0].message
    assert "'cruncher' is cpu_bound" in message, "inline 'desk' may call; 'helper' does not"
    assert f"calls md.call(...) at {source}:{call_line + 1}" in message
    assert "UsageError" in message and "HandlerResponse(payload, to=peer)" in message


def test_meta_calls_reads_the_metadata_parameter_of_any_name_and_skips_what_has_no_source() -> None:
    def handler(msg: object, context: Any) -> None:
        context.call("a", msg)  # found: the second parameter, whatever its name
        meta = context
        meta.call("b", msg)  # not found: another name

    found = meta_calls(handler)
    assert found is not None
    file, param, lines = found
    first = inspect.getsourcelines(handler)[1]
    assert (file, param, lines) == (__file__, "context", [first + 1])
    assert meta_calls(print) is None, "a builtin has no source"
    assert meta_calls(lambda m: m) is None
