"""Every default and range is written once, in `xml_pipeline._settings`, and read everywhere:
by the YAML reader, by `Listener` and `Organism`, by ``from_yaml``'s overrides and in the
README's organism.yaml reference; a refused value gets the same words from each."""

from __future__ import annotations

import ast
import dataclasses
import inspect
import math
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from textwrap import dedent
from typing import Any

import pytest
import yaml

import xml_pipeline
from xml_pipeline import ConfigError, HandlerMetadata, Listener, Organism, UsageError, payload
from xml_pipeline._config import ListenerConfig, OrganismConfig, parse_config
from xml_pipeline._settings import (
    BackendConfig,
    BackoffSettings,
    CircuitSettings,
    DeadLetterConfig,
    ListenerSettings,
    OrganismSettings,
    ProcessPoolConfig,
    RetrySettings,
    RunsConfig,
    default_of,
    defaults,
    settings_fields,
    spec_of,
    values_of,
)
from xml_pipeline.control import ControlConfig
from xml_pipeline.metrics.settings import (
    JsonlSinkConfig,
    MetricsConfig,
    OtlpSinkConfig,
    PrometheusSinkConfig,
    RedisStreamSinkConfig,
    SinkSettings,
    TracingConfig,
)

ROOT = Path(__file__).resolve().parents[1]
LIBRARY = Path(xml_pipeline.__file__).resolve().parent
HELLO = str(ROOT / "organisms" / "hello" / "organism.yaml")

# the section of organism.yaml each class of settings is read from
SECTIONS: dict[str, type] = {
    "organism": OrganismSettings,
    "listeners": ListenerSettings,
    "backend": BackendConfig,
    "process_pool": ProcessPoolConfig,
    "dead_letters": DeadLetterConfig,
    "runs": RunsConfig,
    "control": ControlConfig,
}
SETTINGS = [(section, f) for section, cls in SECTIONS.items() for f in settings_fields(cls)]

MINIMAL = """\
organism:
  name: hello
listeners:
  - name: greeter
    payload_class: handlers.Greeting
    handler: handlers.greet
"""


@payload
@dataclass
class Msg:
    text: str = ""


async def echo(msg: Msg, meta: HandlerMetadata) -> None:
    return None


def setting_id(case: tuple[str, dataclasses.Field[Any]]) -> str:
    return f"{case[0]}.{case[1].name}"


def same(a: object, b: object) -> bool:
    """Equal, and of the same kind (True is not 1; 30 and 30.0 are the same number)."""
    if isinstance(a, bool) or isinstance(b, bool):
        return a is b
    if isinstance(a, list | tuple) and isinstance(b, list | tuple):
        return list(a) == list(b)
    return a == b


# -- defaults: one value, read by every reader ---------------------------------------------------


@pytest.mark.parametrize("case", SETTINGS, ids=setting_id)
def test_every_default_passes_its_own_checks(case: tuple[str, dataclasses.Field[Any]]) -> None:
    _, f = case
    default = default_of(f)
    assert default is not dataclasses.MISSING, "every setting of a section has a default"
    spec = spec_of(f)
    assert spec.doc, "every setting says what it means"
    assert (default is None and spec.nullable) or spec.accepts(default)
    assert list(spec.problems(f.name, default, {})) == []


@pytest.mark.parametrize("case", SETTINGS, ids=setting_id)
def test_a_key_left_out_of_organism_yaml_takes_the_settings_default(
    case: tuple[str, dataclasses.Field[Any]],
) -> None:
    section, f = case
    config = parse_config(MINIMAL + "control:\n", file="organism.yaml")  # empty: defaults
    holder = {
        "organism": config,
        "listeners": config.listeners[0],
        "backend": config.backend,
        "process_pool": config.process_pool,
        "dead_letters": config.dead_letters,
        "runs": config.runs,
        "control": config.control,
    }[section]
    assert same(getattr(holder, f.name), default_of(f))


@pytest.mark.parametrize("f", settings_fields(ListenerSettings), ids=lambda f: f.name)
def test_listener_takes_its_defaults_from_the_settings(f: dataclasses.Field[Any]) -> None:
    parameter = inspect.signature(Listener).parameters[f.name]
    assert parameter.kind is inspect.Parameter.KEYWORD_ONLY
    assert same(parameter.default, default_of(f))
    assert same(getattr(Listener("front", Msg, echo), f.name), default_of(f))


@pytest.mark.parametrize("f", settings_fields(OrganismSettings), ids=lambda f: f.name)
def test_organism_takes_its_defaults_from_the_settings(f: dataclasses.Field[Any]) -> None:
    parameter = inspect.signature(Organism).parameters[f.name]
    assert same(parameter.default, default_of(f))
    assert same(getattr(Organism([Listener("front", Msg, echo)])._settings, f.name), default_of(f))


def test_organism_reads_its_defaults_rather_than_spelling_them() -> None:
    """`Organism.__init__`'s defaults are expressions that read the settings, not literals."""
    tree = ast.parse((LIBRARY / "_organism.py").read_text(encoding="utf-8"))
    [init] = [
        node
        for cls in tree.body
        if isinstance(cls, ast.ClassDef) and cls.name == "Organism"
        for node in cls.body
        if isinstance(node, ast.FunctionDef) and node.name == "__init__"
    ]
    names = {f.name for f in settings_fields(OrganismSettings)}
    written = {
        arg.arg: ast.unparse(default)
        for arg, default in zip(init.args.kwonlyargs, init.args.kw_defaults, strict=True)
        if arg.arg in names and isinstance(default, ast.Constant)
    }
    assert written == {}, "spelled again in Organism.__init__"


def test_the_readers_spell_no_default_again() -> None:
    """No module that reads organism.yaml or builds listeners writes a default of a setting
    as a literal (small numbers and flags aside: they are too common to tell)."""
    distinctive = {
        default_of(f)
        for _, f in SETTINGS
        if isinstance(default_of(f), int | float | str)
        and not isinstance(default_of(f), bool)
        and default_of(f) not in (0, 1, 2, "")
    }
    assert 10_000 in distinctive and "xp:" in distinctive
    found = []
    for name in ("_config.py", "_loader.py", "_handlers.py"):
        for node in ast.walk(ast.parse((LIBRARY / name).read_text(encoding="utf-8"))):
            if (
                isinstance(node, ast.Constant)
                and not isinstance(node.value, bool)
                and isinstance(node.value, int | float | str)
                and node.value in distinctive
            ):
                found.append(f"{name}:{node.lineno}: {node.value!r}")
    assert found == []


# Settings classes beyond the sections above: nested ones and the metrics: / tracing: sections.
_MORE_SETTINGS = (
    BackoffSettings,
    RetrySettings,
    CircuitSettings,
    SinkSettings,
    PrometheusSinkConfig,
    JsonlSinkConfig,
    RedisStreamSinkConfig,
    OtlpSinkConfig,
    MetricsConfig,
    TracingConfig,
)
_SETTINGS_MODULES = ("_settings.py", "metrics/settings.py", "control/settings.py")
# The same number as a setting's default, with a meaning of its own.
_OTHER_MEANINGS = {
    "_wire/parsing.py:max_depth",  # 64, as backend.redis_pool_size
    "_wire/parsing.py:max_elements",  # 10,000, as organism.max_hops
    "metrics/collector.py:timeout",  # flush(timeout=5.0)
    "testing.py:timeout",  # drain(timeout=5.0)
    "metrics/trace.py:keep",  # LiveTraces(keep=10_000): organism run --trace
    "metrics/otel_trace.py:keep",  # SpanWriter(keep=...): given tracing.conversations
}


def _folded(node: ast.expr) -> object:
    """A constant expression's value (``256 * 1024`` too), else None."""
    try:
        return eval(compile(ast.Expression(node), "<default>", "eval"), {"__builtins__": {}})
    except Exception:
        return None


def _defaults_written(tree: ast.AST) -> Iterator[tuple[str, ast.expr]]:
    """Each default a module writes, with the name it is the default of: parameters, class
    fields, ``getattr(obj, "name", default)`` and argparse's ``default=`` (named "default")."""
    for node in ast.walk(tree):
        if isinstance(node, ast.arguments):
            positional = [*node.posonlyargs, *node.args]
            tail = positional[len(positional) - len(node.defaults) :]
            pairs = [*zip(tail, node.defaults, strict=True)]
            for arg, default in [*pairs, *zip(node.kwonlyargs, node.kw_defaults, strict=True)]:
                if default is not None:
                    yield arg.arg, default
        elif isinstance(node, ast.ClassDef):
            for item in node.body:
                if isinstance(item, ast.AnnAssign) and item.value is not None:
                    yield ast.unparse(item.target), item.value
        elif isinstance(node, ast.keyword) and node.arg == "default":
            yield "default", node.value
        elif isinstance(node, ast.Call) and ast.unparse(node.func) == "getattr" and node.args[2:]:
            yield str(_folded(node.args[1])), node.args[2]


def test_no_module_spells_a_settings_default_as_a_default_of_its_own() -> None:
    """Outside the settings modules, no parameter default, field default, ``getattr``
    fallback or argparse ``default=`` is a setting's default written again as a literal (small
    numbers and flags aside): the runtime, the wire layer and the CLI read them."""
    fields = [f for _, f in SETTINGS] + [f for c in _MORE_SETTINGS for f in settings_fields(c)]
    distinctive = {
        (type(value) is str, value)
        for f in fields
        if isinstance(value := default_of(f), int | float | str)
        and not isinstance(value, bool)
        and value not in (0, 1, 2, "")
    }
    assert (False, 262144) in distinctive and (True, "XP_CONTROL_TOKEN") in distinctive
    found = set()
    for path in sorted(LIBRARY.rglob("*.py")):
        module = path.relative_to(LIBRARY).as_posix()
        if module in _SETTINGS_MODULES:
            continue
        for name, expr in _defaults_written(ast.parse(path.read_text(encoding="utf-8"))):
            value = _folded(expr)
            if (
                isinstance(value, int | float | str)
                and not isinstance(value, bool)
                and (type(value) is str, value) in distinctive
            ):
                found.add(f"{module}:{name}")
    assert found - _OTHER_MEANINGS == set()


# -- the README ---------------------------------------------------------------------------------


def readme_reference() -> tuple[dict[str, Any], str]:
    """The organism.yaml reference block of the README, parsed, and its text."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = text.split("## organism.yaml reference", 1)[1]
    block = section.split("```yaml\n", 1)[1].split("```", 1)[0]
    document = yaml.safe_load(block)
    assert isinstance(document, dict)
    return document, block


@pytest.mark.parametrize("case", SETTINGS, ids=setting_id)
def test_the_readme_reference_gives_every_setting_with_its_default(
    case: tuple[str, dataclasses.Field[Any]],
) -> None:
    section, f = case
    document, block = readme_reference()
    values = document[section][0] if section == "listeners" else document[section]
    assert f.name in values, f"the README's organism.yaml reference leaves out {section}.{f.name}"
    if f.default_factory is not dataclasses.MISSING:  # computed: the comment says so
        [line] = [line for line in block.splitlines() if line.strip().startswith(f"{f.name}:")]
        assert "default:" in line
    else:
        assert same(values[f.name], default_of(f)), f"{section}.{f.name}"


def test_the_readme_reference_lists_the_sections_keys_in_their_order() -> None:
    document, _ = readme_reference()
    listener = document["listeners"][0]
    assert list(document["organism"]) == [f.name for f in settings_fields(OrganismConfig)]
    assert list(listener) == [f.name for f in settings_fields(ListenerConfig)]
    assert list(document["backend"]) == [f.name for f in settings_fields(BackendConfig)]
    assert list(document["process_pool"]) == [f.name for f in settings_fields(ProcessPoolConfig)]
    assert list(document["dead_letters"]) == [f.name for f in settings_fields(DeadLetterConfig)]
    assert list(document["runs"]) == [f.name for f in settings_fields(RunsConfig)]
    assert list(document["control"]) == [f.name for f in settings_fields(ControlConfig)]


def test_the_readme_listener_signature_gives_the_settings_defaults() -> None:
    text = " ".join((ROOT / "README.md").read_text(encoding="utf-8").split())
    match = re.search(r"`Listener\(name, payload_class, handler, ([^`]*)\)`", text)
    assert match, "the README shows Listener's signature"
    shown = {}
    for part in match.group(1).split(", "):
        key, _, value = part.partition("=")
        try:
            shown[key] = ast.literal_eval(value)
        except ValueError:
            shown[key] = ...  # `peers=(...)`: no value shown
    usual = defaults(ListenerSettings)
    assert set(shown) <= set(usual)
    assert {k: v for k, v in shown.items() if v is not ...} == {
        k: usual[k] for k, v in shown.items() if v is not ...
    }


# -- a refused value: the same words from the file and from code ---------------------------------


def out_of_range(f: dataclasses.Field[Any]) -> int | float:
    spec = spec_of(f)
    assert spec.minimum is not None
    low = spec.minimum if spec.exclusive else spec.minimum - 1
    return int(low) if spec.kind == "integer" else low


RANGED = [(s, f) for s, f in SETTINGS if spec_of(f).minimum is not None]
# (section, key, the value in organism.yaml, the value in code)
REFUSED: list[tuple[str, str, str, object]] = (
    [(section, f.name, str(out_of_range(f)), out_of_range(f)) for section, f in RANGED]
    + [(section, f.name, ".inf", math.inf) for section, f in RANGED if spec_of(f).kind == "seconds"]
    + [
        ("listeners", "name", "_front", "_front"),
        ("listeners", "name", "'two words'", "two words"),
        ("listeners", "name", "''", ""),
        ("listeners", "peers", "['']", ("",)),
        ("backend", "type", "reddis", "reddis"),
        ("backend", "type", "postgres", "postgres"),
        ("backend", "redis_url", "http://cache", "http://cache"),
        ("backend", "redis_prefix", "''", ""),
        ("backend", "manager_address", "localhost", "localhost"),
        ("control", "listen", "nowhere", "nowhere"),
        ("control", "listen", "127.0.0.1:99999", "127.0.0.1:99999"),
        ("control", "token_env", "'A=B'", "A=B"),
        ("runs", "lost_after_seconds", "0.5", 0.5),
        ("runs", "lost_after_seconds", "1", 1),
        ("runs", "forget_after_seconds", "3", 3.0),
    ]
)


def yaml_problem(section: str, key: str, value: str) -> str:
    if section == "listeners":
        text = MINIMAL.replace(
            "    handler: handlers.greet\n", f"    handler: handlers.greet\n    {key}: {value}\n"
        )
        if key == "name":
            text = MINIMAL.replace("name: greeter", f"name: {value}")
    elif section == "organism":
        text = MINIMAL.replace("  name: hello\n", f"  name: hello\n  {key}: {value}\n")
    else:
        text = MINIMAL + f"{section}:\n  {key}: {value}\n"
    with pytest.raises(ConfigError) as info:
        parse_config(dedent(text), file="organism.yaml")
    [problem] = info.value.problems
    assert problem.key_path.startswith(
        f"{section if section != 'listeners' else 'listeners[0]'}.{key}"
    )
    return problem.message


def code_problem(section: str, key: str, value: object) -> str:
    with pytest.raises(UsageError) as info:
        if section == "listeners" and key == "name":
            Listener(value, Msg, echo)  # type: ignore[arg-type]
        elif section == "listeners":
            Listener("front", Msg, echo, **{key: value})
        elif section == "organism":
            Organism([Listener("front", Msg, echo)], **{key: value})
        elif section == "backend":
            BackendConfig(**{key: value})
        elif section == "dead_letters":
            DeadLetterConfig(**{key: value})
        elif section == "runs":
            RunsConfig(**{key: value})
        elif section == "control":
            ControlConfig(**{key: value})
        else:
            ProcessPoolConfig(**{key: value})
    return str(info.value).removeprefix("[usage] ")


@pytest.mark.parametrize(("section", "key", "written", "value"), REFUSED, ids=lambda v: str(v))
def test_a_refused_value_gets_the_same_words_from_the_file_and_from_code(
    section: str, key: str, written: str, value: object
) -> None:
    in_file = yaml_problem(section, key, written)
    in_code = code_problem(section, key, value)
    # organism.yaml: "<key path>: <problem>"; code: "<who>: <setting> <problem>"
    assert in_code.endswith(f" {in_file}"), (in_file, in_code)
    assert re.search(rf": {re.escape(key)}(\[0\])? {re.escape(in_file)}$", in_code), in_code


@pytest.mark.parametrize(
    ("section", "key", "written", "value"),
    [case for case in REFUSED if case[0] != "listeners"],
    ids=lambda v: str(v),
)
def test_from_yaml_overrides_get_the_same_words(
    section: str, key: str, written: str, value: object
) -> None:
    in_file = yaml_problem(section, key, written)
    with pytest.raises(UsageError) as info:
        if section == "organism":
            Organism.from_yaml(HELLO, **{key: value})
        else:
            Organism.from_yaml(HELLO, **{section: {key: value}})
    assert str(info.value).endswith(f" {in_file}") or f" {in_file};" in str(info.value)


# -- across listeners: one check, called by the file reader and by Organism ---------------------

ACROSS: list[tuple[list[tuple[str, list[str]]], str]] = [
    ([("front", ["front"])], "own peer"),
    ([("front", ["back", "back"]), ("back", [])], "listed twice"),
    ([("front", ["bakc"]), ("back", [])], "did you mean 'back'?"),
    ([("front", ["nobody"])], "no listener named 'nobody'"),
]


@pytest.mark.parametrize(("listeners", "words"), ACROSS, ids=lambda v: str(v))
def test_checks_across_listeners_say_the_same_in_the_file_and_in_code(
    listeners: list[tuple[str, list[str]]], words: str
) -> None:
    lines = ["organism:", "  name: x", "listeners:"]
    for name, peers in listeners:
        lines += [f"  - name: {name}", "    payload_class: m.C", "    handler: m.f"]
        lines += [f"    peers: [{', '.join(peers)}]"]
    with pytest.raises(ConfigError) as file_info:
        parse_config("\n".join(lines) + "\n", file="organism.yaml")
    [problem] = file_info.value.problems
    assert words in problem.message
    with pytest.raises(UsageError) as code_info:
        Organism([Listener(name, Msg, echo, peers=peers) for name, peers in listeners])
    assert str(code_info.value).endswith(
        f"{problem.key_path.rpartition('.')[2]}: {problem.message}"
    )


def test_a_listener_name_used_twice_is_refused_in_the_file_and_in_code() -> None:
    with pytest.raises(ConfigError, match=r"already used by listeners\[0\] \(line 4\)"):
        parse_config(MINIMAL + MINIMAL.split("listeners:\n")[1], file="organism.yaml")
    with pytest.raises(UsageError, match=r"listeners\[1\]: .* already used by listeners\[0\]"):
        Organism([Listener("front", Msg, echo), Listener("front", Msg, echo)])


def test_settings_objects_check_themselves_and_store_normal_values() -> None:
    """Built in code, settings are checked like the file's and stored as the file's are."""
    listener = Listener("front", Msg, echo, peers=iter(["back"]), timeout_seconds=3)  # type: ignore[arg-type]
    assert listener.peers == ("back",) and listener.timeout_seconds == 3.0
    assert isinstance(listener.timeout_seconds, float)
    assert values_of(ListenerSettings, listener)["peers"] == ("back",)
    with pytest.raises(UsageError, match="manager_authkey is required when manager_address"):
        BackendConfig(type="manager", manager_address="h:1")
    with pytest.raises(UsageError, match=r"Organism\(\): max_hops takes int, not '5' \(str\)"):
        Organism([Listener("front", Msg, echo)], max_hops="5")  # type: ignore[arg-type]


def test_lost_after_must_outlast_the_heartbeat_and_forget_after_must_outlast_lost_after() -> None:
    """A live process is heard from once per heartbeat: ``lost_after_seconds`` at or below it
    would list its running handlers lost. Refused with file, key path, line and what to set."""
    text = MINIMAL + "runs:\n  heartbeat_seconds: 2\n  lost_after_seconds: 1.5\n"
    with pytest.raises(ConfigError) as info:
        parse_config(dedent(text), file="organism.yaml")
    [problem] = info.value.problems
    assert problem.key_path == "runs.lost_after_seconds"
    assert problem.line == dedent(text).splitlines().index("  lost_after_seconds: 1.5") + 1
    assert "must be more than heartbeat_seconds (2)" in problem.message
    assert "set lost_after_seconds to 6 (3 heartbeats) or more" in problem.message
    assert "organism.yaml:" in str(info.value)
    # no heartbeat: nothing is listed lost, any positive value goes; above it: fine
    assert RunsConfig(heartbeat_seconds=0, lost_after_seconds=0.5).lost_after_seconds == 0.5
    assert RunsConfig(heartbeat_seconds=0.2, lost_after_seconds=1.0).lost_after_seconds == 1.0
    with pytest.raises(UsageError, match="forget_after_seconds must be more than lost_after"):
        RunsConfig(lost_after_seconds=10, forget_after_seconds=10)
