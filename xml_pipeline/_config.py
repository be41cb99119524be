"""organism.yaml -> frozen, typed configuration.

The file is parsed once, here, into frozen dataclasses; the rest of the library never sees a
dict. Parsing walks the YAML node tree so that every problem can name its key path
(``listeners[1].peers[0]``) and line, and collects every problem before raising one
`ConfigError`. Each section is read key by key from the specs of its settings
(`xml_pipeline._settings`, the one home of every default and range); what is only in the file
(dotted paths, source lines) is added here. Importing the classes and handlers the file names
is `xml_pipeline._loader`'s job.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from xml_pipeline._errors import ConfigError, ConfigProblem
from xml_pipeline._imports import ImportPath
from xml_pipeline._settings import (  # noqa: F401 - Retry/CircuitSettings name ListenerConfig fields
    LISTENER_NAME,
    BackendConfig,
    CircuitSettings,
    DeadLetterConfig,
    ListenerSettings,
    OrganismSettings,
    ProcessPoolConfig,
    RetrySettings,
    Rule,
    RunsConfig,
    Spec,
    default_of,
    defaults,
    did_you_mean,
    listener_set_problems,
    problems,
    setting,
    settings_fields,
    spec_of,
)
from xml_pipeline.control.settings import ControlConfig
from xml_pipeline.metrics.settings import (
    SINK_TYPES,
    MetricsConfig,
    SinkSettings,
    TracingConfig,
    sink_class,
)

__all__ = [
    "BackendConfig",
    "DeadLetterConfig",
    "ListenerConfig",
    "MetricsConfig",
    "OrganismConfig",
    "ProcessPoolConfig",
    "RunsConfig",
    "TracingConfig",
    "load_config",
    "parse_config",
    "parse_section",
]

_DOCUMENT = "(document)"  # key path of problems that concern the whole file
_MERGE_TAG = "tag:yaml.org,2002:merge"


def _dotted_path(example: str) -> Rule:
    """The rule of a dotted path setting: organism.yaml's form of an `ImportPath`."""

    def rule(value: str | None, values: Mapping[str, Any]) -> str | None:
        if value is None:
            return None  # an optional path left unset
        try:
            ImportPath.from_dotted(value)
        except ValueError:
            return f"must be a dotted path like {example!r} (module.name), found {value!r}"
        return None

    return rule


@dataclass(frozen=True, slots=True, kw_only=True)
class ListenerConfig(ListenerSettings):
    """One listener as declared; ``payload_class`` and ``handler`` are still dotted paths.

    ``line`` and ``key_path`` locate the listener's entry (and ``payload_class_line`` and
    ``handler_line`` those two values) so that later import errors can point at the file.
    """

    name: str = field(metadata=LISTENER_NAME)
    payload_class: str = field(
        metadata=setting(
            "text", "its @payload class, module.Class", rule=_dotted_path("handlers.Greeting")
        )
    )
    handler: str = field(
        metadata=setting(
            "text", "its handler, module.function", rule=_dotted_path("handlers.greet")
        )
    )
    compensate: str | None = field(
        default=None,
        metadata=setting(
            "text",
            "a handler, module.function, run with its answer when the conversation fails",
            nullable=True,
            rule=_dotted_path("handlers.undo"),
        ),
    )
    line: int | None = None
    key_path: str = ""
    payload_class_line: int | None = None
    handler_line: int | None = None
    compensate_line: int | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class OrganismConfig(OrganismSettings):
    """A whole organism file, validated. ``file`` is absolute."""

    file: Path
    name: str = field(
        metadata=setting("text", "the organism's name", non_empty="name the organism")
    )
    description: str = field(default="", metadata=setting("text", "what it does, for people"))
    listeners: tuple[ListenerConfig, ...]
    backend: BackendConfig = field(default_factory=BackendConfig)
    process_pool: ProcessPoolConfig = field(default_factory=ProcessPoolConfig)
    dead_letters: DeadLetterConfig = field(default_factory=DeadLetterConfig)
    runs: RunsConfig = field(default_factory=RunsConfig)
    metrics: MetricsConfig | None = None
    tracing: TracingConfig | None = None
    control: ControlConfig | None = None

    @property
    def folder(self) -> Path:
        """The directory holding the organism file; its handler modules are imported from here."""
        return self.file.parent

    def listener(self, name: str) -> ListenerConfig:
        """The listener called ``name``.

        Raises:
            KeyError: no listener has that name (the message suggests a close one).
        """
        for listener in self.listeners:
            if listener.name == name:
                return listener
        names = [listener.name for listener in self.listeners]
        hint = did_you_mean(name, names) or f"; declared listeners: {', '.join(names)}"
        raise KeyError(f"organism {self.name!r} has no listener named {name!r}{hint}")


def load_config(path: str | os.PathLike[str]) -> OrganismConfig:
    """Read and validate an organism file.

    Raises:
        ConfigError: the file cannot be read, is not valid YAML, or breaks the schema; every
            problem found is listed with its key path and line.
    """
    file = os.fspath(path)
    try:
        text = Path(file).read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        message = f"is not UTF-8 text ({exc.reason} at byte {exc.start}); save it as UTF-8"
        raise ConfigError(ConfigProblem(file, _DOCUMENT, None, message)) from None
    except OSError as exc:
        message = f"cannot read the organism file: {exc.strerror or exc}; check the path"
        raise ConfigError(ConfigProblem(file, _DOCUMENT, None, message)) from None
    return parse_config(text, file=file)


def parse_config(text: str, *, file: str) -> OrganismConfig:
    """Validate organism YAML given as text; ``file`` names it in messages and sets the folder.

    Raises:
        ConfigError: the text is not valid YAML or breaks the schema; every problem found is
            listed with its key path and line.
    """
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        detail = ", ".join(part for part in (exc.context, exc.problem) if part)
        message = f"YAML syntax error: {detail}; fix the indentation, quotes or punctuation here"
        line = None if mark is None else mark.line + 1
        raise ConfigError(ConfigProblem(file, _DOCUMENT, line, message)) from None
    except yaml.YAMLError as exc:
        raise ConfigError(ConfigProblem(file, _DOCUMENT, None, f"not valid YAML: {exc}")) from None
    if root is None:
        message = "the file is empty; it needs an 'organism:' section and a 'listeners:' list"
        raise ConfigError(ConfigProblem(file, _DOCUMENT, None, message))
    reader = _Reader(file)
    config = reader.organism(root, Path(file).absolute())
    if reader.problems or config is None:
        reader.problems.sort(key=lambda p: (p.line is None, p.line or 0))
        raise ConfigError(reader.problems)
    return config


def parse_section(name: str, values: object, *, file: str) -> Any:
    """The ``backend``, ``process_pool``, ``dead_letters``, ``metrics`` or ``tracing`` section
    given as a mapping (an override in code; ``tracing`` also takes a bool), read by the rules
    of organism.yaml; ``file`` names it in messages. Relative paths stay relative to the
    working directory.

    Returns:
        a `BackendConfig`, `ProcessPoolConfig`, `DeadLetterConfig`, `MetricsConfig`, or
        `TracingConfig` (None for ``tracing=False``).

    Raises:
        ConfigError: every problem, by key path (no line: the mapping has none).
    """
    reader = _Reader(file)
    try:
        data = dict(values) if isinstance(values, Mapping) else values
        node = yaml.representer.SafeRepresenter().represent_data(data)
    except yaml.YAMLError as exc:
        reader.report(name, None, f"holds a value organism.yaml cannot hold: {exc}")
        raise ConfigError(reader.problems) from None
    if name == "metrics":
        found: Any = reader.metrics(node, None)
    elif name == "tracing":
        found = reader.tracing(node)
    else:
        cls = _SECTION_CLASSES[name]
        found = reader.settings(reader.section(node, name, name), cls)
        if not reader.problems:
            found = cls(**found)
    if reader.problems:
        raise ConfigError(reader.problems)
    return found


_SECTION_CLASSES: dict[str, type] = {
    "organism": OrganismConfig,
    "listeners": ListenerConfig,
    "backend": BackendConfig,
    "process_pool": ProcessPoolConfig,
    "dead_letters": DeadLetterConfig,
    "control": ControlConfig,
    "runs": RunsConfig,
}


def _nested(classes: dict[str, type]) -> dict[str, type]:
    """Every section class, the nested ones (``listeners[i].retry.backoff``) by their key."""
    found = dict(classes)
    todo = list(classes.values())
    while todo:
        for f in settings_fields(todo.pop()):
            section = spec_of(f).section
            if section is not None and f.name not in found:
                found[f.name] = section
                todo.append(section)
    return found


# sections read by their own methods; a sink's keys are those of its type ("sink:jsonl")
_OTHER_CLASSES: dict[str, type] = {
    "metrics": MetricsConfig,
    "tracing": TracingConfig,
    **{f"sink:{kind}": sink_class(kind) or SinkSettings for kind in SINK_TYPES},
}
_ALL_SECTIONS = {**_nested(_SECTION_CLASSES), **_OTHER_CLASSES}
_SECTIONS: dict[str, tuple[str, ...]] = {  # the keys allowed in each section
    "": (*_SECTION_CLASSES, "metrics", "tracing"),
    **{name: tuple(f.name for f in settings_fields(cls)) for name, cls in _ALL_SECTIONS.items()},
}
_SECTIONS["metrics"] += ("sinks",)
_REQUIRED: dict[str, tuple[str, ...]] = {
    "": ("organism", "listeners"),
    **{
        name: tuple(f.name for f in settings_fields(cls) if default_of(f) is dataclasses.MISSING)
        for name, cls in _ALL_SECTIONS.items()
    },
}
_WORD = Spec("text", "an item of a list")  # one item of a `words` list
_PEER = Spec("text", "a listener this one may call")  # one item of `peers:`


def _unknown_key(key: str, section: str) -> str:
    if hint := did_you_mean(key, _SECTIONS[section]):
        return f"unknown key{hint}"
    sinks = [s for s, keys in _SECTIONS.items() if s.startswith("sink:") and key in keys]
    if section.startswith("sink:"):
        kind = section.removeprefix("sink:")
        if sinks:
            others = " and ".join(s.removeprefix("sink:") for s in sinks)
            return f"unknown key for a {kind} sink; '{key}' is a setting of {others} sinks"
        return f"unknown key for a {kind} sink; allowed keys: {', '.join(_SECTIONS[section])}"
    homes = [
        s for s, keys in _SECTIONS.items()
        if key in keys and s not in ("", section) and not s.startswith("sink:")
    ]  # fmt: skip
    if sinks and not homes:
        return f"unknown key here; '{key}' belongs in a sink entry under 'metrics: sinks:'"
    if homes == ["listeners"]:
        return f"unknown key here; '{key}' belongs in a listener entry under 'listeners:'"
    if homes:
        return f"unknown key here; '{key}' belongs under '{homes[0]}:'"
    return f"unknown key; allowed keys here: {', '.join(_SECTIONS[section])}"


def _describe(node: yaml.Node) -> str:
    """What was found, in words, for 'expected X, found Y' messages."""
    if isinstance(node, yaml.MappingNode):
        return "a mapping"
    if isinstance(node, yaml.SequenceNode):
        return "a list"
    kind = node.tag.rpartition(":")[2]
    if kind == "null":
        return "an empty value (null)"
    if kind == "str":
        return f"text {node.value!r}"
    words = {"int": "the integer", "float": "the number", "bool": "the boolean"}
    return f"{words.get(kind, kind)} {node.value}"


def _line(node: yaml.Node | None) -> int | None:
    if node is None or node.start_mark is None:  # a mapping given in code has no marks
        return None
    return int(node.start_mark.line) + 1


class _Reader:
    """Collects problems and turns YAML nodes into Python values."""

    def __init__(self, file: str) -> None:
        self.file = file
        self.problems: list[ConfigProblem] = []
        self._constructor = yaml.SafeLoader("")  # converts scalars and resolves merge keys

    def report(self, key_path: str, node: yaml.Node | None, message: str) -> None:
        problem = ConfigProblem(self.file, key_path or _DOCUMENT, _line(node), message)
        self.problems.append(problem)

    def scalar(self, node: yaml.Node) -> object:
        try:
            return self._constructor.construct_object(node)
        except (yaml.YAMLError, ValueError, TypeError):  # e.g. an impossible date
            return node.value

    def section(self, node: yaml.Node | None, path: str, kind: str) -> _Section:
        """A mapping's keys; unknown, duplicate and missing keys are reported."""
        required = _REQUIRED[kind]
        section = _Section(self, path, node, required)
        if node is None:
            return section
        if not isinstance(node, yaml.MappingNode):
            found = _describe(node)
            self.report(path, node, f"expected a mapping (key: value lines), found {found}")
            return section
        seen: set[str] = set()
        for key_node, _ in node.value:
            if isinstance(key_node, yaml.ScalarNode) and key_node.tag != _MERGE_TAG:
                if key_node.value in seen:
                    self.report(
                        section.where(key_node.value), key_node, "key given twice; keep only one"
                    )
                seen.add(key_node.value)
        try:
            self._constructor.flatten_mapping(node)  # `<<: *defaults` merge keys
        except yaml.MarkedYAMLError as exc:
            self.report(path, node, f"cannot merge keys here: {exc.problem}")
            return section
        for key_node, value_node in node.value:
            if not isinstance(key_node, yaml.ScalarNode):
                self.report(path, key_node, "keys must be plain names; found a complex key")
            elif key_node.value not in _SECTIONS[kind]:
                where = section.where(key_node.value)
                self.report(where, key_node, _unknown_key(key_node.value, kind))
            else:
                section.fields[key_node.value] = value_node  # own keys follow merged ones
        for key in required:
            if key not in section.fields:
                message = f"required key is missing; add '{key}: ...'"
                self.report(section.where(key), node, message)
        return section

    def settings(self, section: _Section, cls: type) -> dict[str, Any]:
        """The values the section gives for the settings of ``cls``, read and checked by their
        specs; every problem is reported at its key. Keys not given are left out."""
        found: dict[str, Any] = {}
        for f in settings_fields(cls):
            value = section.value(f.name, spec_of(f))
            if value is not _ABSENT and value is not _WRONG:
                found[f.name] = value
        # rules see the whole section: what is given, and the defaults of the rest
        for key, message in problems(cls, {**defaults(cls), **found}):
            section.report(key, message)
        return found

    # -- the schema -----------------------------------------------------------------------------

    def organism(self, root: yaml.Node, file: Path) -> OrganismConfig | None:
        """The whole file; None when a problem was reported."""
        top = self.section(root, "", "")
        org = self.settings(
            self.section(top.fields.get("organism"), "organism", "organism"), OrganismConfig
        )
        listeners = self.listeners(top.fields.get("listeners"))
        backend = self.settings(
            self.optional_section(top.fields.get("backend"), "backend"), BackendConfig
        )
        pool = self.optional_section(top.fields.get("process_pool"), "process_pool")
        process_pool = self.settings(pool, ProcessPoolConfig)
        letters = self.optional_section(top.fields.get("dead_letters"), "dead_letters")
        dead_letters = self.settings(letters, DeadLetterConfig)
        control_node = top.fields.get("control")
        control = (
            None
            if control_node is None
            else self.settings(self.optional_section(control_node, "control"), ControlConfig)
        )
        runs = self.settings(self.optional_section(top.fields.get("runs"), "runs"), RunsConfig)
        metrics = self.metrics(top.fields.get("metrics"), file.parent)
        tracing = self.tracing(top.fields.get("tracing"))
        if self.problems:
            return None  # the values read are incomplete: never build from them
        return OrganismConfig(
            file=file,
            listeners=tuple(ListenerConfig(**values) for values in listeners),
            backend=BackendConfig(**backend),
            process_pool=ProcessPoolConfig(**process_pool),
            dead_letters=DeadLetterConfig(**dead_letters),
            control=None if control is None else ControlConfig(**control),
            runs=RunsConfig(**runs),
            metrics=metrics,
            tracing=tracing,
            **org,
        )

    def metrics(self, node: yaml.Node | None, folder: Path | None) -> MetricsConfig | None:
        """The ``metrics:`` section (None when absent); relative paths are resolved against
        ``folder`` (the organism file's). None after a problem was reported."""
        if node is None:
            return None
        before = len(self.problems)
        section = self.optional_section(node, "metrics")
        values = self.settings(section, MetricsConfig)
        sinks = self.sinks(section.fields.get("sinks"), folder)
        if len(self.problems) > before:
            return None
        dead_letter = values.get("dead_letter")
        if folder is not None and isinstance(dead_letter, str):
            values["dead_letter"] = str(folder / dead_letter)
        return MetricsConfig(**values, sinks=tuple(sinks))

    def sinks(self, node: yaml.Node | None, folder: Path | None) -> list[Any]:
        """Each entry of ``metrics.sinks``, read by the settings of its ``type``."""
        if node is None or (isinstance(node, yaml.ScalarNode) and node.tag.endswith(":null")):
            return []
        if not isinstance(node, yaml.SequenceNode):
            message = f"expected a list of sinks (- type: prometheus ...), found {_describe(node)}"
            self.report("metrics.sinks", node, message)
            return []
        found = []
        for i, item in enumerate(node.value):
            path = f"metrics.sinks[{i}]"
            if not isinstance(item, yaml.MappingNode):
                message = f"expected a mapping (type: ...), found {_describe(item)}"
                self.report(path, item, message)
                continue
            kind_node = next(
                (v for k, v in item.value if isinstance(k, yaml.ScalarNode) and k.value == "type"),
                None,
            )
            if kind_node is None:
                message = f"required key is missing; add 'type: ...' ({', '.join(SINK_TYPES)})"
                self.report(f"{path}.type", item, message)
                continue
            kind = self.scalar(kind_node) if isinstance(kind_node, yaml.ScalarNode) else None
            cls = sink_class(kind) if isinstance(kind, str) else None
            if cls is None:
                hint = (
                    did_you_mean(str(kind), SINK_TYPES) or f"; use one of {', '.join(SINK_TYPES)}"
                )
                self.report(f"{path}.type", kind_node, f"must be a sink type, found {kind!r}{hint}")
                continue
            before = len(self.problems)
            values = self.settings(self.section(item, path, f"sink:{kind}"), cls)
            if len(self.problems) > before:
                continue
            sink_path = values.get("path")
            if folder is not None and isinstance(sink_path, str):
                values["path"] = str(folder / sink_path)
            found.append(cls(**values))
        return found

    def tracing(self, node: yaml.Node | None) -> TracingConfig | None:
        """``tracing: true`` (the defaults), ``false`` (None), or a mapping of its settings."""
        if node is None:
            return None
        if isinstance(node, yaml.ScalarNode):
            value = self.scalar(node)
            if isinstance(value, bool):
                return TracingConfig() if value else None
        elif isinstance(node, yaml.MappingNode):
            before = len(self.problems)
            values = self.settings(self.section(node, "tracing", "tracing"), TracingConfig)
            return None if len(self.problems) > before else TracingConfig(**values)
        message = (
            f"expected true, false or a mapping (conversations: 1000), found {_describe(node)}"
        )
        self.report("tracing", node, message)
        return None

    def listeners(self, node: yaml.Node | None) -> list[dict[str, Any]]:
        """Each listener's values, its key path and lines included."""
        if node is None:
            return []
        if not isinstance(node, yaml.SequenceNode):
            message = f"expected a list of listeners (- name: ...), found {_describe(node)}"
            self.report("listeners", node, message)
            return []
        sections = [
            self.section(item, f"listeners[{i}]", "listeners") for i, item in enumerate(node.value)
        ]
        listeners = []
        for section in sections:
            values = self.settings(section, ListenerConfig)
            values.update(
                line=_line(section.node),
                key_path=section.path,
                payload_class_line=_line(section.fields.get("payload_class")),
                handler_line=_line(section.fields.get("handler")),
                compensate_line=_line(section.fields.get("compensate")),
            )
            listeners.append(values)
        written = [(s.written("name"), s.written_list("peers")) for s in sections]

        def where(i: int) -> str:
            return f"{sections[i].path} (line {_line(sections[i].node)})"

        for problem in listener_set_problems(written, where):
            if problem.listener is None:
                self.report("listeners", node, problem.message)
            else:
                key = "name" if problem.peer is None else f"peers[{problem.peer}]"
                sections[problem.listener].report(key, problem.message)
        return listeners

    def optional_section(self, node: yaml.Node | None, name: str, path: str = "") -> _Section:
        """An optional section; absent or empty (``backend:`` alone) means all defaults.

        ``path`` is its key path when nested (``listeners[0].retry``), else ``name``.
        """
        if isinstance(node, yaml.ScalarNode) and node.tag.endswith(":null"):
            node = None
        return self.section(node, path or name, name)


_ABSENT = object()  # a key that is not given
_WRONG = object()  # a value that was reported as wrong


class _Section:
    """The keys of one mapping, read as typed values; problems are reported at their key."""

    def __init__(
        self, reader: _Reader, path: str, node: yaml.Node | None, required: Sequence[str] = ()
    ) -> None:
        self.reader = reader
        self.path = path
        self.node = node
        self.required = required
        self.fields: dict[str, yaml.Node] = {}

    def where(self, key: str) -> str:
        return f"{self.path}.{key}" if self.path else key

    def node_at(self, key: str) -> yaml.Node | None:
        """The node of ``key`` or of an item ``key[i]``; the section's own when absent."""
        name, bracket, rest = key.partition("[")
        node = self.fields.get(name)
        if bracket and isinstance(node, yaml.SequenceNode):
            index = int(rest.rstrip("]"))
            node = node.value[index] if index < len(node.value) else node
        return self.node if node is None else node

    def report(self, key: str, message: str) -> None:
        self.reader.report(self.where(key), self.node_at(key), message)

    def value(self, key: str, spec: Spec) -> object:
        """The value of ``key`` if it is of the setting's type; `_ABSENT` when not given,
        `_WRONG` after a report."""
        node = self.fields.get(key)
        if node is None:
            return _ABSENT
        if spec.kind == "section" and spec.section is not None:
            return self._section(key, node, spec.section)
        if spec.kind not in ("names", "words"):
            return self._scalar(key, node, spec)
        if not isinstance(node, yaml.SequenceNode):
            self.report(key, f"expected {spec.expected}, found {_describe(node)}")
            return _WRONG
        item_spec = _PEER if spec.kind == "names" else _WORD
        items = [self._scalar(f"{key}[{i}]", item, item_spec) for i, item in enumerate(node.value)]
        return _WRONG if _WRONG in items else tuple(items)

    def _section(self, key: str, node: yaml.Node, cls: type) -> object:
        """A nested section (``retry:``), read key by key; empty means all defaults."""
        reader = self.reader
        before = len(reader.problems)
        section = reader.optional_section(node, key, self.where(key))
        values = reader.settings(section, cls)
        if len(reader.problems) > before:
            return _WRONG
        return cls(**values)

    def _scalar(self, key: str, node: yaml.Node, spec: Spec) -> object:
        if isinstance(node, yaml.ScalarNode):
            value = self.reader.scalar(node)
            if spec.accepts(value) or (value is None and spec.nullable):
                return value
        hint = ""
        if isinstance(node, yaml.ScalarNode) and node.tag.endswith(":null"):
            hint = "; give a value" if key in self.required else "; give a value or remove the key"
        elif spec.kind == "text" and isinstance(node, yaml.ScalarNode):
            hint = "; put it in quotes to make it text"
        self.reader.report(
            self.where(key), node, f"expected {spec.expected}, found {_describe(node)}{hint}"
        )
        return _WRONG

    def written(self, key: str) -> str:
        """The text given for ``key`` as written, for checks across listeners ("" if none)."""
        node = self.fields.get(key)
        value = self.reader.scalar(node) if isinstance(node, yaml.ScalarNode) else None
        return value if isinstance(value, str) else ""

    def written_list(self, key: str) -> list[object]:
        """The items given for the list ``key``, as written (None for an item that is not
        plain), for checks across listeners."""
        node = self.fields.get(key)
        if not isinstance(node, yaml.SequenceNode):
            return []
        return [
            self.reader.scalar(item) if isinstance(item, yaml.ScalarNode) else None
            for item in node.value
        ]
