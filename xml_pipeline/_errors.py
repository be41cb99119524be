"""The exception tree of xml-pipeline.

Every error the library raises derives from one root, and every error carries a stable
``reason`` code that programs can match on (messages are for people and may change). The codes
are the members of `Reason`, the one list of them; a test pins that this tree names exactly the
codes each class may carry (``Class.reasons``)::

    XmlPipelineError                   root; .reason is a stable code
    ├── ConfigError(ValueError)        organism.yaml, or what it names, is wrong
    │                                    config
    ├── PayloadTypeError(TypeError)    a @payload class uses an unsupported type, or an
    │                                  object is not a payload where one is needed
    │                                    unsupported_type
    ├── XmlInputError(ValueError)      XML rejected before any handler saw it
    │   │                                too_large, malformed, doctype, too_deep,
    │   │                                too_many_elements, not_an_envelope
    │   └── SchemaViolation            a payload does not conform to its class
    │                                    schema_violation
    ├── DeliveryError                  a message was not answered
    │                                    handler_error, timeout, no_route, peer_denied,
    │                                    schema_violation, no_answer, overloaded,
    │                                    worker_crash, invalid_response, hop_limit,
    │                                    forged_sender, cancelled, shutdown,
    │                                    backend_error, backend_unreachable, internal_error,
    │                                    circuit_open, compensation_failed
    ├── BackendError(ConnectionError)  shared state unreachable or failing
    │                                    backend_unreachable, backend_error
    ├── SinkError(ConnectionError)     a metrics sink cannot start (port in use, file not
    │                                  writable, server down)
    │                                    sink_error
    ├── NotFoundError(LookupError)     what was asked for is not known (a conversation's trace)
    │                                    not_found
    ├── RetryLater                     raised by a handler: run me again after a delay
    │                                    handler_error
    ├── PermanentError                 raised by a handler: this failure must not be retried
    │                                    handler_error
    └── UsageError(ValueError)         the library was called the wrong way
        │                                usage
        └── UnknownIdError             no run, conversation or worker has that id
                                         usage

Every class pickles and unpickles with its attributes (`XmlPipelineError.__reduce__`), so an
error can cross a process boundary; the process pool still sends failures as plain data.
"""

from __future__ import annotations

import os
import re
import sysconfig
import traceback
from collections.abc import Iterable
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, ClassVar

__all__ = [
    "BackendError",
    "ConfigError",
    "ConfigProblem",
    "DeliveryError",
    "NotFoundError",
    "PayloadTypeError",
    "PermanentError",
    "Reason",
    "RetryLater",
    "SchemaViolation",
    "SinkError",
    "UnknownIdError",
    "UsageError",
    "XmlInputError",
    "XmlPipelineError",
    "raised_at",
]


class Reason(StrEnum):
    """Every reason code an error or an `ErrorReport` can carry: the one list of them.

    Members are strings (``Reason.TIMEOUT == "timeout"``), so code may match on either.
    """

    ERROR = "error"  # the root's default; no error the library raises keeps it
    CONFIG = "config"
    UNSUPPORTED_TYPE = "unsupported_type"
    TOO_LARGE = "too_large"
    MALFORMED = "malformed"
    DOCTYPE = "doctype"
    TOO_DEEP = "too_deep"
    TOO_MANY_ELEMENTS = "too_many_elements"
    NOT_AN_ENVELOPE = "not_an_envelope"
    SCHEMA_VIOLATION = "schema_violation"
    HANDLER_ERROR = "handler_error"
    TIMEOUT = "timeout"
    NO_ROUTE = "no_route"
    PEER_DENIED = "peer_denied"
    NO_ANSWER = "no_answer"
    OVERLOADED = "overloaded"
    WORKER_CRASH = "worker_crash"
    INVALID_RESPONSE = "invalid_response"
    HOP_LIMIT = "hop_limit"
    FORGED_SENDER = "forged_sender"
    CANCELLED = "cancelled"
    SHUTDOWN = "shutdown"
    BACKEND_ERROR = "backend_error"
    BACKEND_UNREACHABLE = "backend_unreachable"
    INTERNAL_ERROR = "internal_error"
    SINK_ERROR = "sink_error"
    NOT_FOUND = "not_found"
    CIRCUIT_OPEN = "circuit_open"
    COMPENSATION_FAILED = "compensation_failed"
    USAGE = "usage"


def _restore(cls: type[XmlPipelineError], args: tuple[Any, ...], state: dict[str, Any]) -> Any:
    """Unpickle an error without calling its ``__init__`` (whose arguments vary by class)."""
    error = cls.__new__(cls)
    BaseException.__init__(error, *args)
    error.__dict__.update(state)
    return error


class XmlPipelineError(Exception):
    """Root of every error raised by xml-pipeline.

    Attributes:
        reason: a stable, machine-matchable code, a member of `Reason` (see the module
            docstring for which class carries which).
        message: what went wrong, where, and what to do about it.

    Raises:
        ValueError: ``reason`` is not a member of `Reason` (a code must be listed there).
    """

    reason: Reason = Reason.ERROR
    reasons: ClassVar[frozenset[Reason]] = frozenset()  # the codes this class may carry

    def __init__(self, message: str, *, reason: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        if reason is not None:
            self.reason = Reason(reason)

    def __str__(self) -> str:
        return f"[{self.reason}] {self.message}"

    def __reduce__(self) -> tuple[Any, ...]:
        # BaseException pickles as cls(*args), which fails for required keyword-only
        # arguments (and then concurrent.futures takes the unpicklable result for a crash)
        return _restore, (type(self), self.args, dict(self.__dict__))


@dataclass(frozen=True, slots=True)
class ConfigProblem:
    """One problem found in an organism file: where it is and what is wrong."""

    file: str
    key_path: str
    line: int | None
    message: str

    def __str__(self) -> str:
        where = self.file if self.line is None else f"{self.file}:{self.line}"
        return f"{where}: {self.key_path}: {self.message}"


class ConfigError(XmlPipelineError, ValueError):
    """The organism file, or a class or handler it names, is wrong.

    ``problems`` lists every problem found (validation reports them all at once).
    """

    reason = Reason.CONFIG
    reasons = frozenset({Reason.CONFIG})

    def __init__(self, problems: list[ConfigProblem] | ConfigProblem) -> None:
        self.problems = [problems] if isinstance(problems, ConfigProblem) else list(problems)
        lines = [str(p) for p in self.problems]
        if len(lines) == 1:
            message = lines[0]
        else:
            message = f"{len(lines)} problems:\n  " + "\n  ".join(lines)
        super().__init__(message)


class PayloadTypeError(XmlPipelineError, TypeError):
    """A ``@payload`` class declares a field whose type cannot travel as XML, or an object
    that is not a payload was given where one is needed.

    Attributes:
        file: the source file of the class (or field) at fault, when known; the message then
            starts with ``file:line:``.
        line: the line in ``file``, when known.
    """

    reason = Reason.UNSUPPORTED_TYPE
    reasons = frozenset({Reason.UNSUPPORTED_TYPE})

    def __init__(self, message: str, *, file: str | None = None, line: int | None = None) -> None:
        where = f"{file}:{line}: " if file and line else f"{file}: " if file else ""
        super().__init__(where + message)
        self.file = file
        self.line = line


class XmlInputError(XmlPipelineError, ValueError):
    """XML from outside was rejected before any handler saw it.

    Attributes:
        line: the line of the input where the problem was found, when known.
        path: the element path (``/message/meta/to``) where it was found, when known.
    """

    reasons = frozenset(
        {
            Reason.TOO_LARGE,
            Reason.MALFORMED,
            Reason.DOCTYPE,
            Reason.TOO_DEEP,
            Reason.TOO_MANY_ELEMENTS,
            Reason.NOT_AN_ENVELOPE,
        }
    )

    def __init__(
        self,
        message: str,
        *,
        reason: str,
        line: int | None = None,
        path: str | None = None,
    ) -> None:
        where = []
        if line is not None:
            where.append(f"line {line}")
        if path:
            where.append(f"at {path}")
        full = f"{message} ({', '.join(where)})" if where else message
        super().__init__(full, reason=reason)
        self.line = line
        self.path = path


class SchemaViolation(XmlInputError):
    """A payload does not conform to its payload class (its XSD or its field spec)."""

    reasons = frozenset({Reason.SCHEMA_VIOLATION})

    def __init__(self, message: str, *, line: int | None = None, path: str | None = None) -> None:
        super().__init__(message, reason="schema_violation", line=line, path=path)


class DeliveryError(XmlPipelineError):
    """A message was not answered: the handler failed, timed out, or could not be reached.

    Attributes:
        listener: the listener where the failure happened, when known.
        thread: the opaque thread id of the failed hop, when known; ``None`` when the call
            was refused before any conversation started (its input, its route, ingress), so
            a gateway can tell a caller's mistake (4xx) from a failure inside the organism.
    """

    reasons = frozenset(
        {
            Reason.HANDLER_ERROR,
            Reason.TIMEOUT,
            Reason.NO_ROUTE,
            Reason.PEER_DENIED,
            Reason.SCHEMA_VIOLATION,
            Reason.NO_ANSWER,
            Reason.OVERLOADED,
            Reason.WORKER_CRASH,
            Reason.INVALID_RESPONSE,
            Reason.HOP_LIMIT,
            Reason.FORGED_SENDER,
            Reason.CANCELLED,
            Reason.SHUTDOWN,
            Reason.BACKEND_ERROR,
            Reason.BACKEND_UNREACHABLE,
            Reason.INTERNAL_ERROR,
            Reason.CIRCUIT_OPEN,
            Reason.COMPENSATION_FAILED,
        }
    )

    def __init__(
        self,
        message: str,
        *,
        reason: str,
        listener: str | None = None,
        thread: str | None = None,
    ) -> None:
        super().__init__(message, reason=reason)
        self.listener = listener
        self.thread = thread


class BackendError(XmlPipelineError, ConnectionError):
    """The shared-state backend is unreachable or answered something unexpected."""

    reason = Reason.BACKEND_ERROR
    reasons = frozenset({Reason.BACKEND_ERROR, Reason.BACKEND_UNREACHABLE})


class SinkError(XmlPipelineError, ConnectionError):
    """A metrics sink cannot start: its port is in use, its file cannot be written, its
    server is down (a sink with ``required: false`` is retried instead).

    Attributes:
        sink: the sink's name (``prometheus``, ``jsonl``, ``jsonl#2``...).
    """

    reason = Reason.SINK_ERROR
    reasons = frozenset({Reason.SINK_ERROR})

    def __init__(self, message: str, *, sink: str = "") -> None:
        super().__init__(message)
        self.sink = sink


class NotFoundError(XmlPipelineError, LookupError):
    """What was asked for is not known: e.g. the trace of a conversation that was never seen,
    or is no longer kept; the message says what is kept and how to keep more."""

    reason = Reason.NOT_FOUND
    reasons = frozenset({Reason.NOT_FOUND})


class RetryLater(XmlPipelineError):
    """Raised by a handler: this run failed for now; run it again after ``after_seconds``.

    The listener's ``retry`` policy still bounds the attempts (and its ``on`` list need not
    name ``handler_error``); a listener without a policy fails with ``handler_error``. The
    delay replaces the policy's backoff for this attempt (a peer's ``Retry-After``, say). In a
    ``cpu_bound`` handler the policy's backoff is used (the worker sends only the class).

    Attributes:
        after_seconds: seconds to wait before the next attempt (at least 0).
    """

    reason = Reason.HANDLER_ERROR
    reasons = frozenset({Reason.HANDLER_ERROR})

    def __init__(self, message: str = "", *, after_seconds: float = 0.0) -> None:
        super().__init__(message or f"retry later (after {after_seconds:g}s)")
        self.after_seconds = max(0.0, float(after_seconds))


class PermanentError(XmlPipelineError):
    """Raised by a handler: this failure is final; the retry policy never runs it again."""

    reason = Reason.HANDLER_ERROR
    reasons = frozenset({Reason.HANDLER_ERROR})


class UsageError(XmlPipelineError, ValueError):
    """The library was called the wrong way (e.g. a HandlerResponse with no target)."""

    reason = Reason.USAGE
    reasons = frozenset({Reason.USAGE})


class UnknownIdError(UsageError):
    """No run, conversation or worker has the id given (``Organism.cancel_run``,
    ``cancel_conversation``, ``kill_worker``): it never existed, or is no longer listed.

    Attributes:
        kind: ``"run"``, ``"conversation"`` or ``"worker"``.
        id: the id asked for, as given (a worker's pid as text).
    """

    def __init__(self, message: str, *, kind: str, id: str) -> None:
        super().__init__(message)
        self.kind = kind
        self.id = id


# where code that is not the user's lives: this package, the standard library, installed packages
_OURS = os.path.dirname(__file__) + os.sep
_LIBRARIES = tuple(
    {os.path.join(sysconfig.get_paths()[key], "") for key in ("stdlib", "purelib", "platlib")}
)
_FRAME_LINE = re.compile(r'^  File "(?P<file>[^"]+)", line (?P<line>\d+), in (?P<name>.+)$', re.M)


def raised_at(where: BaseException | str) -> str:
    """Where user code raised, as ``" (at handlers.py:80, in audit)"``, or ``""``.

    ``where`` is an exception (its traceback is read) or a formatted traceback (the text a
    worker process sends back). The user's frame is the innermost one outside xml-pipeline,
    the standard library and installed packages (a handler's own line, also when a library it
    called raised); failing that, the innermost one outside xml-pipeline.
    """
    frames: Iterable[tuple[str, str, str]]
    if isinstance(where, BaseException):
        frames = (
            (f.filename, str(f.lineno), f.name) for f in traceback.extract_tb(where.__traceback__)
        )
    else:
        frames = ((m["file"], m["line"], m["name"]) for m in _FRAME_LINE.finditer(where))
    user = library = None
    for frame in frames:
        file = frame[0]
        if file.startswith(_OURS) or file.startswith("<"):
            continue
        if file.startswith(_LIBRARIES):
            library = frame
        else:
            user = frame
    chosen = user or library
    if chosen is None:
        return ""
    file, line, name = chosen
    shown = os.path.relpath(file) if file.startswith(os.getcwd() + os.sep) else file
    return f" (at {shown}:{line}, in {name})"
