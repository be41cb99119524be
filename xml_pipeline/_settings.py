"""Every setting of an organism, written once: its default, its range and what it means.

A setting is a field of one of the frozen dataclasses below whose metadata holds its `Spec`
(kind, minimum, nullable, a rule, a one-line doc), made by `setting`. Everything else reads the
fields instead of spelling a default or a range again:

- the YAML reader (`xml_pipeline._config`) reads each section key by key from the specs and
  reports a problem at its key path and line;
- the code-first constructors (`Listener`, `Organism`, the dataclasses here) take their defaults
  from the fields and check values in ``__post_init__`` (`check_fields`), raising `UsageError`;
- ``Organism.from_yaml`` checks its overrides with the same specs (`value_problem`).

So a value out of range gets the same words wherever it comes from::

    organism.yaml:7: listeners[0].max_concurrency: must be at least 1, found 0
    Listener 'front': max_concurrency must be at least 1, found 0

The checks that span listeners (an empty list, duplicate names, unknown, own or repeated peers)
are `listener_set_problems`, called by the YAML reader and by `Organism` alike.

This module imports nothing of ours but `xml_pipeline._errors`: no YAML, no handlers, no runtime.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import inspect
import math
import os
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, NamedTuple, TypeVar

from xml_pipeline._errors import UsageError

__all__ = [
    "ANSWER_TIMEOUT_SECONDS",
    "BACKEND_TYPES",
    "JITTER",
    "LISTENER_NAME",
    "RETRYABLE",
    "BackendConfig",
    "BackendType",
    "BackoffSettings",
    "CircuitSettings",
    "DeadLetterConfig",
    "ListenerSetProblem",
    "ListenerSettings",
    "OrganismSettings",
    "ProcessPoolConfig",
    "RetrySettings",
    "Rule",
    "RunsConfig",
    "Spec",
    "build",
    "check_fields",
    "default_of",
    "defaults",
    "did_you_mean",
    "listener_set_problems",
    "parse_address",
    "problems",
    "setting",
    "settings_fields",
    "spec_of",
    "value_problem",
    "values_of",
]

Kind = Literal[
    "text", "address", "integer", "seconds", "number", "flag", "names", "words", "section"
]
# a further check of a value of the right type: the value, and every value of its section
Rule = Callable[[Any, Mapping[str, Any]], "str | None"]
_SPEC = "xml_pipeline.setting"  # the metadata key of a field's Spec
_T = TypeVar("_T")


@dataclass(frozen=True, slots=True)
class Spec:
    """How one setting is read and checked.

    Attributes:
        kind: ``text`` (str), ``address`` (``[host:]port`` as text, or a port number alone
            as an int: stored as text, read by `parse_address`), ``integer`` (int, not
            bool), ``seconds`` (a finite int or float, stored as float), ``number`` (the
            same, not a duration), ``flag`` (bool),
            ``names`` (a list of listener names, stored as a tuple), ``words`` (a list of
            other text items, stored as a tuple) or ``section`` (a nested mapping read into
            the dataclass ``section``).
        doc: what the setting means, in one line.
        minimum: the smallest value allowed (``integer`` and ``seconds``).
        exclusive: the minimum itself is out of range.
        nullable: None is a value (an unset setting), not a mistake.
        non_empty: blank text is refused, and this says what to give instead.
        rule: a further check; returns the problem, phrased to follow the setting's name
            (``must ...``, ``is ...``), or None.
        section: the frozen settings dataclass a ``section`` setting is read into.
    """

    kind: Kind
    doc: str
    minimum: float | None = None
    exclusive: bool = False
    nullable: bool = False
    non_empty: str | None = None
    rule: Rule | None = None
    section: type | None = None

    @property
    def expected(self) -> str:
        """What a value must be, in the words of organism.yaml (``expected an integer``)."""
        return _EXPECTED[self.kind]

    @property
    def type_name(self) -> str:
        """What a value must be, in the words of Python (``takes int``)."""
        name = self.section.__name__ if self.section is not None else _TYPE_NAMES[self.kind]
        return f"{name} or None" if self.nullable else name

    def accepts(self, value: object) -> bool:
        """Whether ``value`` is of this setting's type (None aside; ``names`` item by item)."""
        if self.kind == "text":
            return isinstance(value, str)
        if self.kind == "address":
            return isinstance(value, str) or (isinstance(value, int) and type(value) is not bool)
        if self.kind == "flag":
            return isinstance(value, bool)
        if isinstance(value, bool):
            return False  # a bool is an int to Python, never to a setting
        if self.kind == "integer":
            return isinstance(value, int)
        if self.kind in ("seconds", "number"):
            return isinstance(value, int | float)
        if self.kind == "section":
            return self.section is not None and isinstance(value, self.section)
        return isinstance(value, tuple) and all(isinstance(item, str) for item in value)

    def problems(
        self, key: str, value: Any, values: Mapping[str, Any]
    ) -> Iterator[tuple[str, str]]:
        """``(key, problem)`` for a value of the right type that this setting refuses.

        ``key`` is the setting's name, or ``name[i]`` for an item of a ``names`` setting.
        """
        if value is None and self.nullable:
            pass  # unset: only a rule may still refuse it (a key another one requires)
        elif self.kind in ("integer", "seconds", "number"):
            if self.kind != "integer" and not math.isfinite(value):
                yield key, f"must be a finite number, found {value}"
                return
            if problem := self._range_problem(value):
                yield key, problem
                return
        elif self.kind == "text" and self.non_empty is not None and not value.strip():
            yield key, f"must not be empty; {self.non_empty}"
            return
        elif self.kind in ("names", "words"):
            for i, item in enumerate(value):
                if not item.strip():
                    what = "name a listener" if self.kind == "names" else "give a value"
                    yield f"{key}[{i}]", f"must not be empty; {what} or remove the entry"
        if self.rule is not None and (problem := self.rule(value, values)):
            yield key, problem

    def _range_problem(self, value: float) -> str | None:
        low = self.minimum
        if low is None or value > low or (value == low and not self.exclusive):
            return None
        if self.exclusive:
            return f"must be greater than {low:g}, found {value}"
        if self.kind == "integer":
            return f"must be at least {low:g}, found {value}"
        return f"must be {low:g} or more, found {value}"


_EXPECTED: dict[Kind, str] = {
    "text": "text",
    "address": "[host:]port (like 127.0.0.1:8750, or a port number)",
    "integer": "an integer",
    "seconds": "a number of seconds",
    "number": "a number",
    "flag": "true or false",
    "names": "a list of listener names ([a, b])",
    "words": "a list ([a, b])",
    "section": "a mapping (key: value lines)",
}
_TYPE_NAMES: dict[Kind, str] = {
    "text": "str",
    "address": "str or int",
    "integer": "int",
    "seconds": "float",
    "number": "float",
    "flag": "bool",
    "names": "a list of listener names",
    "words": "a list of str",
    "section": "a settings object",
}


def parse_address(value: str | int, *, host: str = "127.0.0.1") -> tuple[str, int] | None:
    """``[HOST:]PORT`` (``[::1]:8750`` for IPv6; a port alone, text or int, on ``host``) as
    ``(host, port)``: how every ``address`` setting and ``--control`` are read. None when it is
    not that shape or the port is out of range (0: a free one)."""
    if isinstance(value, bool):
        return None
    given, sep, port = str(value).strip().rpartition(":")
    if sep:
        host = given.removeprefix("[").removesuffix("]")
    if not host or not port.isdigit() or not 0 <= int(port) < 65536:
        return None
    return host, int(port)


def setting(
    kind: Kind,
    doc: str,
    *,
    minimum: float | None = None,
    exclusive: bool = False,
    nullable: bool = False,
    non_empty: str | None = None,
    rule: Rule | None = None,
    section: type | None = None,
) -> Mapping[str, Spec]:
    """The metadata of a setting's field: ``field(default=16, metadata=setting(...))``."""
    return {_SPEC: Spec(kind, doc, minimum, exclusive, nullable, non_empty, rule, section)}


def spec_of(f: dataclasses.Field[Any]) -> Spec:
    """The `Spec` of a setting's field."""
    spec = f.metadata[_SPEC]
    assert isinstance(spec, Spec)
    return spec


@functools.cache
def settings_fields(cls: type) -> tuple[dataclasses.Field[Any], ...]:
    """The fields of a dataclass that are settings: the class's own first, then inherited ones
    (the order organism.yaml lists them in)."""
    own = inspect.get_annotations(cls)
    found = [f for f in dataclasses.fields(cls) if _SPEC in f.metadata]
    return tuple(sorted(found, key=lambda f: f.name not in own))


def default_of(f: dataclasses.Field[Any]) -> Any:
    """A field's default (its factory called), or `dataclasses.MISSING` when it is required."""
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return dataclasses.MISSING


def defaults(cls: type) -> dict[str, Any]:
    """The default of every setting of ``cls`` that has one."""
    found = {f.name: default_of(f) for f in settings_fields(cls)}
    return {name: value for name, value in found.items() if value is not dataclasses.MISSING}


def values_of(cls: type, obj: object) -> dict[str, Any]:
    """The values of the settings of ``cls`` held by ``obj`` (``cls`` or a subclass)."""
    return {f.name: getattr(obj, f.name) for f in settings_fields(cls)}


def problems(cls: type, values: Mapping[str, Any]) -> list[tuple[str, str]]:
    """``(key, problem)`` for each value in ``values`` that its setting of ``cls`` refuses.

    The values are of the right type (the caller checked it, in its own words); settings
    missing from ``values`` are not checked, but rules see every value given.
    """
    found: list[tuple[str, str]] = []
    for f in settings_fields(cls):
        if f.name in values:
            found += spec_of(f).problems(f.name, values[f.name], values)
    return found


def _type_problem(spec: Spec, value: object) -> str | None:
    """What is wrong with the type of a value given in code, in Python's words."""
    if (value is None and spec.nullable) or spec.accepts(value):
        return None
    if spec.kind in ("names", "words"):
        what = "listener names" if spec.kind == "names" else "text items"
        if isinstance(value, str | bytes) or not isinstance(value, Iterable):
            hint = f"; did you mean ({value!r},)?" if isinstance(value, str) else ""
            return f"takes a list of {what}, not {value!r}{hint}"
        bad = [item for item in value if not isinstance(item, str)]
        return f"takes {what} (text), not {bad!r}" if bad else None
    return f"takes {spec.type_name}, not {value!r} ({type(value).__name__})"


def _normal(spec: Spec, value: Any) -> Any:
    if spec.kind == "address" and isinstance(value, int):
        return str(value)
    if spec.kind in ("seconds", "number") and value is not None:
        return float(value)
    if spec.kind in ("names", "words"):
        return tuple(value)
    return value


def _first_problem(cls: type, values: dict[str, Any]) -> tuple[str, str] | None:
    """The first ``(key, problem)`` of values given in code, normalizing ``names`` iterables
    to tuples in place so that each is read once; None when every value is fine."""
    for f in settings_fields(cls):
        if f.name in values:
            spec = spec_of(f)
            value = values[f.name]
            if spec.kind in ("names", "words") and not isinstance(value, str | bytes | tuple):
                # any iterable of names (a list, a generator) is read once
                value = values[f.name] = tuple(value) if isinstance(value, Iterable) else value
            if problem := _type_problem(spec, value):
                return f.name, problem
    found = problems(cls, values)
    return found[0] if found else None


def _checked(cls: type, values: Mapping[str, Any], where: str) -> dict[str, Any]:
    """``values`` with each setting's value normalized (seconds as float, names as a tuple).

    Raises:
        UsageError: ``{where}: {setting} {problem}`` for the first value refused.
    """
    normal = dict(values)
    if problem := _first_problem(cls, normal):
        raise UsageError(f"{where}: {problem[0]} {problem[1]}")
    for f in settings_fields(cls):
        if f.name in normal:
            normal[f.name] = _normal(spec_of(f), normal[f.name])
    return normal


def check_fields(obj: object, where: str) -> None:
    """Check every setting of a dataclass instance and store its normalized value; what the
    settings dataclasses (and `Listener`) run in ``__post_init__``.

    Raises:
        UsageError: ``{where}: {setting} {problem}`` for the first value refused.
    """
    values = values_of(type(obj), obj)
    for name, value in _checked(type(obj), values, where).items():
        if value is not values[name]:
            object.__setattr__(obj, name, value)  # frozen: normalizing is part of building


def build(cls: type[_T], where: str, /, **values: Any) -> _T:
    """``cls(**values)``, with a refused value named from ``where`` (``Organism()``) rather than
    from the class.

    Raises:
        UsageError: ``{where}: {setting} {problem}``.
    """
    return cls(**_checked(cls, values, where))


def value_problem(cls: type, key: str, value: object) -> str | None:
    """What the setting ``key`` of ``cls`` refuses in ``value`` given in code (its type, range
    or rule), phrased to follow its name; None when it is fine."""
    problem = _first_problem(cls, {key: value})
    return None if problem is None else problem[1]


def did_you_mean(word: str, choices: Iterable[str]) -> str:
    """``"; did you mean 'x'?"`` for the choice closest to ``word``, or "" when none is close."""
    close = difflib.get_close_matches(word, list(choices), n=1)
    return f"; did you mean {close[0]!r}?" if close else ""


# -- the organism ---------------------------------------------------------------------------

# How long a caller waits for a conversation's answer unless it says (Organism.request and
# request_envelope, organism run --timeout, organism dlq replay --timeout).
ANSWER_TIMEOUT_SECONDS = 30.0


@dataclass(frozen=True, slots=True, kw_only=True)
class OrganismSettings:
    """How an organism admits, carries and records messages (the ``organism:`` section)."""

    drain_timeout_seconds: float = field(
        default=10.0,
        metadata=setting(
            "seconds", "how long leaving waits for in-flight work", minimum=0, exclusive=True
        ),
    )
    max_message_bytes: int = field(
        default=262144,
        metadata=setting(
            "integer", "size cap for XML from outside, checked before parsing", minimum=1
        ),
    )
    ingress_limit: int = field(
        default=1024,
        metadata=setting("integer", "conversations open at once before ingress waits", minimum=1),
    )
    ingress_wait_seconds: float = field(
        default=5.0,
        metadata=setting(
            "seconds", "how long ingress waits for a slot, then fails with overloaded", minimum=0
        ),
    )
    history: bool = field(
        default=True, metadata=setting("flag", "record each hop in the conversation history")
    )
    max_hops: int = field(
        default=10_000,
        metadata=setting("integer", "hops one conversation may make (then hop_limit)", minimum=1),
    )
    outbox_size: int = field(
        default=1000,
        metadata=setting(
            "integer",
            "outcomes of send/inject kept for outcomes() readers (then the oldest are dropped)",
            minimum=1,
        ),
    )

    def __post_init__(self) -> None:
        check_fields(self, type(self).__name__)


# -- the backend ----------------------------------------------------------------------------

BackendType = Literal["memory", "manager", "redis"]
BACKEND_TYPES: tuple[BackendType, ...] = ("memory", "manager", "redis")
_REDIS_SCHEMES = ("redis://", "rediss://", "unix://")


def _backend_type(value: str, values: Mapping[str, Any]) -> str | None:
    if value in BACKEND_TYPES:
        return None
    hint = did_you_mean(value, BACKEND_TYPES) or "; use memory, manager or redis"
    return f"must be a backend type, found {value!r}{hint}"


def _redis_url(value: str, values: Mapping[str, Any]) -> str | None:
    if value.startswith(_REDIS_SCHEMES):
        return None
    return f"must start with redis://, rediss:// or unix://, found {value!r}"


def _host_port(value: str | None, values: Mapping[str, Any]) -> str | None:
    if value is None:
        return None
    host, sep, port = value.rpartition(":")
    if sep and host.strip("[]") and port.isdigit() and 0 < int(port) < 65536:
        return None
    return f"must be host:port (like 127.0.0.1:50000), found {value!r}"


def _authkey(value: str | None, values: Mapping[str, Any]) -> str | None:
    if value or values.get("type") != "manager" or values.get("manager_address") is None:
        return None
    return "is required when manager_address is given; use the manager server's authkey"


@dataclass(frozen=True, slots=True, kw_only=True)
class BackendConfig:
    """Where shared state (thread registry, conversation history) lives.

    Redis- and manager-only settings are kept whatever the type; only the chosen type's are used.

    Raises:
        UsageError: a setting has the wrong type or an impossible value.
    """

    type: BackendType = field(
        default="memory",
        metadata=setting("text", "memory | manager | redis", rule=_backend_type),
    )
    redis_url: str = field(
        default="redis://127.0.0.1:6379/0",
        metadata=setting(
            "text", "the Redis server (redis://, rediss://, unix://)", rule=_redis_url
        ),
    )
    redis_prefix: str = field(
        default="xp:",
        metadata=setting("text", "every key lives under it", non_empty="keys are written under it"),
    )
    redis_max_connections: int = field(
        default=64, metadata=setting("integer", "connections in the Redis pool", minimum=1)
    )
    thread_ttl_seconds: float = field(
        default=3600.0,
        metadata=setting(
            "seconds",
            "sliding TTL of a conversation's entries: a backstop for abandoned ones",
            minimum=0,
            exclusive=True,
        ),
    )
    history_max_entries: int = field(
        default=100,
        metadata=setting(
            "integer", "hops kept per conversation; the oldest are trimmed", minimum=1
        ),
    )
    manager_address: str | None = field(
        default=None,
        metadata=setting(
            "text",
            "host:port of a running manager server; None: start our own",
            nullable=True,
            rule=_host_port,
        ),
    )
    manager_authkey: str | None = field(
        default=None,
        repr=False,
        metadata=setting("text", "the manager server's authkey", nullable=True, rule=_authkey),
    )

    def __post_init__(self) -> None:
        check_fields(self, type(self).__name__)

    @property
    def manager_host_port(self) -> tuple[str, int] | None:
        """``manager_address`` split into ``(host, port)``, or None when it is not set."""
        if self.manager_address is None:
            return None
        host, _, port = self.manager_address.rpartition(":")
        return host.removeprefix("[").removesuffix("]"), int(port)


# -- dead letters -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class DeadLetterConfig:
    """The dead-letter queue: what the organism could not deliver, kept in its backend.

    Raises:
        UsageError: a setting has the wrong type or an impossible value.
    """

    max_entries: int = field(
        default=100_000,
        metadata=setting(
            "integer",
            "dead letters kept per organism; beyond it the oldest are dropped and counted",
            minimum=1,
        ),
    )

    def __post_init__(self) -> None:
        check_fields(self, type(self).__name__)


# -- the run registry -------------------------------------------------------------------------


_HEARTBEAT_SECONDS = 1.0
_LOST_AFTER_SECONDS = 3.0


def _seconds_of(values: Mapping[str, Any], key: str, default: float) -> float | None:
    """A sibling setting's value (its default when not given; None when of the wrong type or
    not finite: that is reported on its own key)."""
    value = values.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return None
    return float(value)


def _after_heartbeat(value: float, values: Mapping[str, Any]) -> str | None:
    heartbeat = _seconds_of(values, "heartbeat_seconds", _HEARTBEAT_SECONDS)
    if not heartbeat or value > heartbeat:  # 0: no heartbeat, nothing is ever listed lost
        return None
    return (
        f"must be more than heartbeat_seconds ({heartbeat:g}), found {value:g}: a live process "
        "is heard from only once per heartbeat, so its running handlers would be listed lost; "
        f"set lost_after_seconds to {3 * heartbeat:g} (3 heartbeats) or more, or lower "
        "heartbeat_seconds"
    )


def _after_lost(value: float, values: Mapping[str, Any]) -> str | None:
    lost = _seconds_of(values, "lost_after_seconds", _LOST_AFTER_SECONDS)
    if lost is None or value > lost:
        return None
    return (
        f"must be more than lost_after_seconds ({lost:g}), found {value:g}: a process that "
        "died would be forgotten before its runs are listed lost; set forget_after_seconds to "
        f"{20 * lost:g} or more"
    )


@dataclass(frozen=True, slots=True, kw_only=True)
class RunsConfig:
    """The run registry: finished runs kept, and the heartbeat that shares them.

    Raises:
        UsageError: a setting has the wrong type or an impossible value.
    """

    keep_finished: int = field(
        default=200,
        metadata=setting(
            "integer",
            "finished runs Organism.runs keeps listed, newest first; 0 keeps none",
            minimum=0,
        ),
    )
    heartbeat_seconds: float = field(
        default=_HEARTBEAT_SECONDS,
        metadata=setting(
            "seconds",
            "how often this process writes its runs to the backend and takes the commands "
            "other processes left it (cancel); 0 turns the heartbeat off",
            minimum=0,
        ),
    )
    lost_after_seconds: float = field(
        default=_LOST_AFTER_SECONDS,
        metadata=setting(
            "seconds",
            "a process not heard from for this long has its unfinished runs listed as lost; "
            "more than heartbeat_seconds",
            minimum=0,
            exclusive=True,
            rule=_after_heartbeat,
        ),
    )
    forget_after_seconds: float = field(
        default=60.0,
        metadata=setting(
            "seconds",
            "a process not heard from for this long is no longer listed at all; more than "
            "lost_after_seconds",
            minimum=0,
            exclusive=True,
            rule=_after_lost,
        ),
    )

    def __post_init__(self) -> None:
        check_fields(self, type(self).__name__)


# -- the process pool -------------------------------------------------------------------------


def _default_workers() -> int:
    return os.cpu_count() or 1


@dataclass(frozen=True, slots=True, kw_only=True)
class ProcessPoolConfig:
    """The worker processes that run ``cpu_bound`` listeners.

    Raises:
        UsageError: a setting has the wrong type or an impossible value.
    """

    workers: int = field(
        default_factory=_default_workers,
        metadata=setting("integer", "worker processes; default: the number of cores", minimum=1),
    )
    max_tasks_per_child: int | None = field(
        default=None,
        metadata=setting(
            "integer",
            "recycle a worker after this many calls; None: never",
            minimum=1,
            nullable=True,
        ),
    )
    max_crashes: int = field(
        default=2,
        metadata=setting("integer", "crashes before a message fails with worker_crash", minimum=1),
    )

    def __post_init__(self) -> None:
        check_fields(self, type(self).__name__)


# -- listeners ----------------------------------------------------------------------------------


def _listener_name(value: str, values: Mapping[str, Any]) -> str | None:
    if any(c.isspace() for c in value):
        return "must not contain spaces; use dots or dashes"
    if value.startswith("_"):
        return "must not start with '_' (reserved); rename the listener"
    return None


# the metadata of a listener's name, for the classes that hold one (`Listener`, `ListenerConfig`)
LISTENER_NAME = setting(
    "text",
    "unique; may contain dots; a leading _ is reserved",
    non_empty="name the listener",
    rule=_listener_name,
)


# -- recovery: retries and circuit breakers ---------------------------------------------------

# the reasons a handler run can fail with, which a retry policy may name in `on`
RETRYABLE = (
    "handler_error", "timeout", "worker_crash", "invalid_response", "schema_violation",
    "peer_denied", "no_route",
)  # fmt: skip
JITTER = ("full", "equal", "none")


def _reasons(value: tuple[str, ...], values: Mapping[str, Any]) -> str | None:
    for item in value:
        if item not in RETRYABLE:
            hint = did_you_mean(item, RETRYABLE) or f"; use some of {', '.join(RETRYABLE)}"
            return f"names {item!r}, which is not a reason a run can fail with{hint}"
    return None


def _type_paths(value: tuple[str, ...], values: Mapping[str, Any]) -> str | None:
    for item in value:
        module, dot, name = item.rpartition(".")
        if not dot or not module or not name.isidentifier():
            return (
                f"names {item!r}; give exception classes as module.Class "
                "(builtins.ValueError, handlers.NotFound)"
            )
    return None


def _jitter(value: str, values: Mapping[str, Any]) -> str | None:
    if value in JITTER:
        return None
    return f"must be one of {', '.join(JITTER)}, found {value!r}{did_you_mean(value, JITTER)}"


def _at_least_initial(value: float, values: Mapping[str, Any]) -> str | None:
    initial = values.get("initial_seconds", 0.0)
    if value < initial:
        return f"must be at least initial_seconds ({initial:g}), found {value:g}"
    return None


@dataclass(frozen=True, slots=True, kw_only=True)
class BackoffSettings:
    """How long to wait before each retry: capped exponential backoff with jitter (the
    ``retry.backoff`` section). Attempt ``n + 1`` waits ``min(max_seconds, initial_seconds *
    multiplier ** (n - 1))``, then ``full`` jitter draws uniformly from 0 to that, ``equal``
    from half of it to all of it, ``none`` takes it as is (AWS Architecture Blog, "Exponential
    Backoff And Jitter", 2015)."""

    initial_seconds: float = field(
        default=0.1, metadata=setting("seconds", "the delay before the first retry", minimum=0)
    )
    max_seconds: float = field(
        default=10.0,
        metadata=setting(
            "seconds", "the longest delay between two attempts", minimum=0, rule=_at_least_initial
        ),
    )
    multiplier: float = field(
        default=2.0, metadata=setting("number", "the delay grows by this each attempt", minimum=1)
    )
    jitter: str = field(
        default="full", metadata=setting("text", "full, equal or none", rule=_jitter)
    )

    def __post_init__(self) -> None:
        check_fields(self, type(self).__name__)


@dataclass(frozen=True, slots=True, kw_only=True)
class RetrySettings:
    """When a failed handler run is run again (a listener's ``retry`` section).

    ``never`` holds exception classes as ``module.Class`` paths (classes are accepted in code
    and stored as paths); a failure whose exception is, or derives from, one of them is final.
    """

    attempts: int = field(
        default=3, metadata=setting("integer", "tries in all, the first included", minimum=1)
    )
    backoff: BackoffSettings = field(
        default_factory=BackoffSettings,
        metadata=setting("section", "the delay before each retry", section=BackoffSettings),
    )
    on: tuple[str, ...] = field(
        default=("handler_error", "timeout", "worker_crash"),
        metadata=setting("words", "the failure reasons that are retried", rule=_reasons),
    )
    never: tuple[str, ...] = field(
        default=(),
        metadata=setting("words", "exception classes that are never retried", rule=_type_paths),
    )

    def __post_init__(self) -> None:
        if not isinstance(self.never, str) and isinstance(self.never, Iterable):
            paths = tuple(
                f"{item.__module__}.{item.__qualname__}" if isinstance(item, type) else item
                for item in self.never
            )
            object.__setattr__(self, "never", paths)
        check_fields(self, type(self).__name__)


@dataclass(frozen=True, slots=True, kw_only=True)
class CircuitSettings:
    """A listener's circuit breaker (its ``circuit`` section): after ``failures`` failed runs
    in a row new hops to it fail at once with ``circuit_open``; after ``reset_seconds`` one
    probe is let through (half-open) and a success closes it again (Nygard, "Release It!")."""

    failures: int = field(
        default=5, metadata=setting("integer", "failed runs in a row that open it", minimum=1)
    )
    reset_seconds: float = field(
        default=30.0,
        metadata=setting(
            "seconds", "how long it stays open before a probe", minimum=0, exclusive=True
        ),
    )

    def __post_init__(self) -> None:
        check_fields(self, type(self).__name__)


@dataclass(frozen=True, slots=True, kw_only=True)
class ListenerSettings:
    """How a listener runs: what `Listener` (code) and `ListenerConfig` (organism.yaml) share
    besides a name, a payload class and a handler."""

    description: str = field(default="", metadata=setting("text", "what it does, for people"))
    peers: tuple[str, ...] = field(
        default=(), metadata=setting("names", "the listeners it may call (not itself)")
    )
    max_concurrency: int = field(
        default=16,
        metadata=setting(
            "integer", "handler runs at once; more wait in the listener's own backlog", minimum=1
        ),
    )
    timeout_seconds: float = field(
        default=30.0,
        metadata=setting(
            "seconds", "a run longer than this fails with timeout", minimum=0, exclusive=True
        ),
    )
    cpu_bound: bool = field(
        default=False, metadata=setting("flag", "run the handler in the process pool")
    )
    handles_errors: bool = field(
        default=False,
        metadata=setting("flag", "receive the failures of its calls as ErrorReport payloads"),
    )
    retry: RetrySettings | None = field(
        default=None,
        metadata=setting(
            "section", "run a failed hop again (none by default)", nullable=True,
            section=RetrySettings,
        ),
    )  # fmt: skip
    circuit: CircuitSettings | None = field(
        default=None,
        metadata=setting(
            "section", "fail fast after failures in a row (none by default)", nullable=True,
            section=CircuitSettings,
        ),
    )  # fmt: skip

    def __post_init__(self) -> None:
        check_fields(self, type(self).__name__)


class ListenerSetProblem(NamedTuple):
    """A problem of a list of listeners as a whole.

    ``listener`` is the index of the listener it concerns (None: the list itself); ``peer`` the
    index of the peer in that listener's ``peers`` (None: the listener's name).
    """

    listener: int | None
    peer: int | None
    message: str


def listener_set_problems(
    listeners: Sequence[tuple[str, Sequence[object]]], where: Callable[[int], str]
) -> list[ListenerSetProblem]:
    """What is wrong with a list of ``(name, peers)``: no listener, a name used twice, a peer
    that is the listener itself, listed twice or not a listener of the list.

    ``where(i)`` names the i-th listener in a message (``listeners[0] (line 4)``). Names and
    peers that are not text, or blank, are skipped: their own settings refuse them.
    """
    if not listeners:
        return [ListenerSetProblem(None, None, "the list is empty; declare at least one listener")]
    found: list[ListenerSetProblem] = []
    first: dict[str, int] = {}
    for i, (name, _) in enumerate(listeners):
        other = first.setdefault(name, i)
        if other != i and name:
            message = (
                f"listener name {name!r} is already used by {where(other)}; give each listener "
                f"a unique name"
            )
            found.append(ListenerSetProblem(i, None, message))
    for i, (name, peers) in enumerate(listeners):
        seen: set[str] = set()
        for k, peer in enumerate(peers):
            if not isinstance(peer, str) or not peer.strip():
                continue
            if peer == name:
                message = "a listener cannot be its own peer; remove it"
            elif peer in seen:
                message = f"{peer!r} is listed twice; remove the duplicate"
            elif peer not in first:
                hint = did_you_mean(peer, first) or "; add that listener or remove the peer"
                message = f"no listener named {peer!r} is declared{hint}"
            else:
                message = ""
            seen.add(peer)
            if message:
                found.append(ListenerSetProblem(i, k, message))
    return found
