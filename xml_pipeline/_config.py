"""organism.yaml -> frozen, typed configuration.

The file is parsed once, here, into frozen dataclasses; the rest of the library never sees a
dict. Parsing walks the YAML node tree so that every problem can name its key path
(``listeners[1].peers[0]``) and line, and collects every problem before raising one
`ConfigError`. Importing the classes and handlers the file names is `xml_pipeline._loader`'s job.
"""

from __future__ import annotations

import dataclasses
import difflib
import keyword
import math
import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import yaml

from xml_pipeline._errors import ConfigError, ConfigProblem

__all__ = [
    "BackendConfig",
    "ListenerConfig",
    "OrganismConfig",
    "ProcessPoolConfig",
    "load_config",
    "parse_config",
]

BackendType = Literal["memory", "manager", "redis"]
_BACKEND_TYPES: tuple[BackendType, ...] = ("memory", "manager", "redis")
_REDIS_SCHEMES = ("redis://", "rediss://", "unix://")
_DOCUMENT = "(document)"  # key path of problems that concern the whole file
_MERGE_TAG = "tag:yaml.org,2002:merge"


def _default_workers() -> int:
    return os.cpu_count() or 1


@dataclass(frozen=True, slots=True, kw_only=True)
class BackendConfig:
    """Where shared state (thread registry, conversation history) lives.

    Redis- and manager-only settings are kept whatever the type; only the chosen type's are used.
    """

    type: BackendType = "memory"
    redis_url: str = "redis://127.0.0.1:6379/0"
    redis_prefix: str = "xp:"
    redis_max_connections: int = 64
    thread_ttl_seconds: float = 3600.0
    history_max_entries: int = 100
    manager_address: str | None = None  # host:port of a running manager; None = start our own
    manager_authkey: str | None = field(default=None, repr=False)

    @property
    def manager_host_port(self) -> tuple[str, int] | None:
        """``manager_address`` split into ``(host, port)``, or None when it is not set."""
        if self.manager_address is None:
            return None
        host, _, port = self.manager_address.rpartition(":")
        return host.removeprefix("[").removesuffix("]"), int(port)


@dataclass(frozen=True, slots=True, kw_only=True)
class ProcessPoolConfig:
    """The worker processes that run ``cpu_bound`` listeners."""

    workers: int = field(default_factory=_default_workers)
    max_tasks_per_child: int | None = None
    max_crashes: int = 2  # crashes before a message fails with ``worker_crash``


@dataclass(frozen=True, slots=True, kw_only=True)
class ListenerConfig:
    """One listener as declared; ``payload_class`` and ``handler`` are still dotted paths.

    ``line`` and ``key_path`` locate the listener's entry (and ``payload_class_line`` and
    ``handler_line`` those two values) so that later import errors can point at the file.
    """

    name: str
    payload_class: str
    handler: str
    description: str = ""
    peers: tuple[str, ...] = ()
    max_concurrency: int = 16
    timeout_seconds: float = 30.0
    cpu_bound: bool = False
    handles_errors: bool = False
    line: int | None = None
    key_path: str = ""
    payload_class_line: int | None = None
    handler_line: int | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class OrganismConfig:
    """A whole organism file, validated. ``file`` is absolute."""

    file: Path
    name: str
    description: str = ""
    drain_timeout_seconds: float = 10.0
    max_message_bytes: int = 262144
    ingress_limit: int = 1024
    ingress_wait_seconds: float = 5.0
    history: bool = True  # record each hop in the conversation history (metadata.history())
    max_hops: int = 10_000  # hops one conversation may make before it fails with hop_limit
    listeners: tuple[ListenerConfig, ...]
    backend: BackendConfig = field(default_factory=BackendConfig)
    process_pool: ProcessPoolConfig = field(default_factory=ProcessPoolConfig)

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
        hint = _did_you_mean(name, names) or f"; declared listeners: {', '.join(names)}"
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
    if reader.problems:
        reader.problems.sort(key=lambda p: (p.line is None, p.line or 0))
        raise ConfigError(reader.problems)
    return config


def _keys(cls: type, *, skip: tuple[str, ...] = ()) -> tuple[str, ...]:
    return tuple(f.name for f in dataclasses.fields(cls) if f.name not in skip)


_SECTIONS: dict[str, tuple[str, ...]] = {  # the keys allowed in each section
    "": ("organism", "listeners", "backend", "process_pool"),
    "organism": _keys(OrganismConfig, skip=("file", "listeners", "backend", "process_pool")),
    "listeners": _keys(
        ListenerConfig, skip=("line", "key_path", "payload_class_line", "handler_line")
    ),
    "backend": _keys(BackendConfig),
    "process_pool": _keys(ProcessPoolConfig),
}


def _did_you_mean(word: str, choices: Iterable[str]) -> str:
    close = difflib.get_close_matches(word, list(choices), n=1)
    return f"; did you mean {close[0]!r}?" if close else ""


def _unknown_key(key: str, section: str) -> str:
    homes = [s for s, keys in _SECTIONS.items() if key in keys and s not in ("", section)]
    if hint := _did_you_mean(key, _SECTIONS[section]):
        return f"unknown key{hint}"
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
    return None if node is None else node.start_mark.line + 1


def _is_str(value: object) -> bool:
    return isinstance(value, str)


def _is_bool(value: object) -> bool:
    return isinstance(value, bool)


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: object) -> bool:
    return _is_int(value) or isinstance(value, float)


def _is_dotted_path(value: str) -> bool:
    parts = value.split(".")
    return len(parts) >= 2 and all(p.isidentifier() and not keyword.iskeyword(p) for p in parts)


def _is_host_port(address: str) -> bool:
    host, sep, port = address.rpartition(":")
    return bool(sep and host.strip("[]") and port.isdigit() and 0 < int(port) < 65536)


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

    def section(
        self, node: yaml.Node | None, path: str, kind: str, required: Sequence[str] = ()
    ) -> _Section:
        """A mapping's keys; unknown, duplicate and missing keys are reported."""
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

    # -- the schema -----------------------------------------------------------------------------

    def organism(self, root: yaml.Node, file: Path) -> OrganismConfig:
        top = self.section(root, "", "", required=("organism", "listeners"))
        org = self.section(top.fields.get("organism"), "organism", "organism", ("name",))
        listeners = self.listeners(top.fields.get("listeners"))
        return OrganismConfig(
            file=file,
            name=org.text("name", empty="name the organism"),
            description=org.text("description"),
            drain_timeout_seconds=org.number("drain_timeout_seconds", 10.0),
            max_message_bytes=org.integer("max_message_bytes", 262144),
            ingress_limit=org.integer("ingress_limit", 1024),
            ingress_wait_seconds=org.number("ingress_wait_seconds", 5.0, zero_ok=True),
            history=org.flag("history", True),
            max_hops=org.integer("max_hops", 10_000),
            listeners=tuple(listener for listener, _ in listeners),
            backend=self.backend(top.fields.get("backend")),
            process_pool=self.process_pool(top.fields.get("process_pool")),
        )

    def listeners(self, node: yaml.Node | None) -> list[tuple[ListenerConfig, _Section]]:
        if node is None:
            return []
        if not isinstance(node, yaml.SequenceNode):
            message = f"expected a list of listeners (- name: ...), found {_describe(node)}"
            self.report("listeners", node, message)
            return []
        if not node.value:
            self.report("listeners", node, "the list is empty; declare at least one listener")
        listeners = [self.listener(item, f"listeners[{i}]") for i, item in enumerate(node.value)]
        self.check_names(listeners)
        for listener, section in listeners:
            self.check_peers(listener, section, {config.name for config, _ in listeners})
        return listeners

    def listener(self, node: yaml.Node, path: str) -> tuple[ListenerConfig, _Section]:
        section = self.section(node, path, "listeners", ("name", "payload_class", "handler"))
        name = section.text("name", empty="name the listener")
        if name.strip() and any(c.isspace() for c in name):
            section.report("name", "listener names cannot contain spaces; use dots or dashes")
        elif name.startswith("_"):
            section.report("name", "names starting with '_' are reserved; rename the listener")
        paths = {"payload_class": "handlers.Greeting", "handler": "handlers.greet"}
        for key, example in paths.items():
            paths[key] = value = section.text(key)
            if value and not _is_dotted_path(value):
                message = f"expected a dotted path like {example!r} (module.name), found {value!r}"
                section.report(key, message)
        peers: list[str] = []
        peers_node = section.fields.get("peers")
        if isinstance(peers_node, yaml.SequenceNode):
            items = _Section(self, path, peers_node)
            items.fields = {f"peers[{i}]": item for i, item in enumerate(peers_node.value)}
            peers = [items.text(key) for key in items.fields]
        elif peers_node is not None:
            section.report(
                "peers",
                f"expected a list of listener names ([a, b]), found {_describe(peers_node)}",
            )
        listener = ListenerConfig(
            name=name,
            payload_class=paths["payload_class"],
            handler=paths["handler"],
            description=section.text("description"),
            peers=tuple(peers),
            max_concurrency=section.integer("max_concurrency", 16),
            timeout_seconds=section.number("timeout_seconds", 30.0),
            cpu_bound=section.flag("cpu_bound"),
            handles_errors=section.flag("handles_errors"),
            line=_line(node),
            key_path=path,
            payload_class_line=_line(section.fields.get("payload_class")),
            handler_line=_line(section.fields.get("handler")),
        )
        return listener, section

    def check_names(self, listeners: list[tuple[ListenerConfig, _Section]]) -> None:
        first: dict[str, ListenerConfig] = {}
        for listener, section in listeners:
            other = first.setdefault(listener.name, listener)
            if other is not listener and listener.name:
                section.report(
                    "name",
                    f"listener name {listener.name!r} is already used by {other.key_path} "
                    f"(line {other.line}); give each listener a unique name",
                )

    def check_peers(self, listener: ListenerConfig, section: _Section, names: set[str]) -> None:
        seen: set[str] = set()
        for i, peer in enumerate(listener.peers):
            where, node = f"{section.path}.peers[{i}]", section.fields["peers"].value[i]
            if not peer:
                continue  # already reported as not text
            if peer == listener.name:
                self.report(where, node, "a listener cannot be its own peer; remove it")
            elif peer in seen:
                self.report(where, node, f"{peer!r} is listed twice; remove the duplicate")
            elif peer and peer not in names:
                hint = _did_you_mean(peer, names) or "; declare it under listeners or remove it"
                self.report(where, node, f"no listener named {peer!r} is declared{hint}")
            seen.add(peer)

    def backend(self, node: yaml.Node | None) -> BackendConfig:
        section = self.optional_section(node, "backend")
        kind = section.text("type", "memory")
        if kind not in _BACKEND_TYPES:
            hint = _did_you_mean(kind, _BACKEND_TYPES) or "; use memory, manager or redis"
            section.report("type", f"unknown backend type {kind!r}{hint}")
        url = section.text("redis_url", "redis://127.0.0.1:6379/0")
        if not url.startswith(_REDIS_SCHEMES):
            section.report(
                "redis_url", f"must start with redis://, rediss:// or unix://, found {url!r}"
            )
        address = section.optional_text("manager_address")
        if address is not None and not _is_host_port(address):
            section.report(
                "manager_address", f"expected host:port (like 127.0.0.1:50000), found {address!r}"
            )
        authkey = section.optional_text("manager_authkey")
        if kind == "manager" and address is not None and not authkey:
            message = "required when manager_address is given; use the manager server's authkey"
            section.report("manager_authkey", message)
        return BackendConfig(
            type=kind if kind in _BACKEND_TYPES else "memory",
            redis_url=url,
            redis_prefix=section.text("redis_prefix", "xp:", empty="keys are written under it"),
            redis_max_connections=section.integer("redis_max_connections", 64),
            thread_ttl_seconds=section.number("thread_ttl_seconds", 3600.0),
            history_max_entries=section.integer("history_max_entries", 100),
            manager_address=address,
            manager_authkey=authkey,
        )

    def process_pool(self, node: yaml.Node | None) -> ProcessPoolConfig:
        section = self.optional_section(node, "process_pool")
        return ProcessPoolConfig(
            workers=section.integer("workers", _default_workers()),
            max_tasks_per_child=section.optional_integer("max_tasks_per_child"),
            max_crashes=section.integer("max_crashes", 2),
        )

    def optional_section(self, node: yaml.Node | None, name: str) -> _Section:
        """An optional section; absent or empty (``backend:`` alone) means all defaults."""
        if isinstance(node, yaml.ScalarNode) and node.tag.endswith(":null"):
            node = None
        return self.section(node, name, name)


_Check = Callable[[object], bool]
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

    def report(self, key: str, message: str) -> None:
        self.reader.report(self.where(key), self.fields.get(key, self.node), message)

    def get(self, key: str, expected: str, accept: _Check, *, nullable: bool = False) -> object:
        """The value of ``key``; None when absent (or null and nullable), `_WRONG` if reported."""
        node = self.fields.get(key)
        if node is None:
            return None
        if isinstance(node, yaml.ScalarNode):
            value = self.reader.scalar(node)
            if accept(value) or (value is None and nullable):
                return value
        hint = ""
        if isinstance(node, yaml.ScalarNode) and node.tag.endswith(":null"):
            hint = "; give a value" if key in self.required else "; give a value or remove the key"
        elif expected == "text" and isinstance(node, yaml.ScalarNode):
            hint = "; put it in quotes to make it text"
        self.report(key, f"expected {expected}, found {_describe(node)}{hint}")
        return _WRONG

    def text(self, key: str, default: str = "", *, empty: str | None = None) -> str:
        """Text; ``empty``, when given, is reported for blank text."""
        value = self.get(key, "text", _is_str)
        if isinstance(value, str) and empty is not None and not value.strip():
            self.report(key, f"must not be empty; {empty}")
        return value if isinstance(value, str) else default

    def optional_text(self, key: str) -> str | None:
        value = self.get(key, "text", _is_str, nullable=True)
        return value if isinstance(value, str) else None

    def flag(self, key: str, default: bool = False) -> bool:
        value = self.get(key, "true or false", _is_bool)
        return default if value is None else value is True

    def integer(self, key: str, default: int) -> int:
        value = self.optional_integer(key, nullable=False)
        return default if value is None else value

    def optional_integer(self, key: str, *, nullable: bool = True) -> int | None:
        value = self.get(key, "an integer", _is_int, nullable=nullable)
        if not isinstance(value, int):
            return None
        if value < 1:
            self.report(key, f"must be at least 1, found {value}")
        return value

    def number(self, key: str, default: float, *, zero_ok: bool = False) -> float:
        value = self.get(key, "a number of seconds", _is_number)
        if not isinstance(value, int | float):
            return default
        if not math.isfinite(value):
            self.report(key, f"must be a finite number, found {value}")
        elif value < 0 or (value == 0 and not zero_ok):
            self.report(
                key, f"must be {'0 or more' if zero_ok else 'greater than 0'}, found {value}"
            )
        return float(value)
