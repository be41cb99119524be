"""The exception tree of xml-pipeline.

Every error the library raises derives from one root, and every error carries a stable
``reason`` code that programs can match on (messages are for people and may change)::

    XmlPipelineError                   root; .reason is a stable code
    ├── ConfigError(ValueError)        organism.yaml, or what it names, is wrong
    │                                    config
    ├── PayloadTypeError(TypeError)    a @payload class uses an unsupported type
    │                                    unsupported_type
    ├── XmlInputError(ValueError)      XML rejected before any handler saw it
    │   │                                too_large, malformed, doctype, too_deep,
    │   │                                too_many_elements, not_an_envelope
    │   └── SchemaViolation            a payload does not conform to its class
    │                                    schema_violation
    ├── DeliveryError                  a message was not answered
    │                                    handler_error, timeout, no_route, peer_denied,
    │                                    schema_violation, no_answer, overloaded,
    │                                    worker_crash, invalid_response, shutdown
    ├── BackendError(ConnectionError)  shared state unreachable or failing
    │                                    backend_unreachable, backend_error
    └── UsageError(ValueError)         the library was called the wrong way
                                         usage
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = [
    "BackendError",
    "ConfigError",
    "ConfigProblem",
    "DeliveryError",
    "PayloadTypeError",
    "SchemaViolation",
    "UsageError",
    "XmlInputError",
    "XmlPipelineError",
]


class XmlPipelineError(Exception):
    """Root of every error raised by xml-pipeline.

    Attributes:
        reason: a stable, machine-matchable code (see the module docstring).
        message: what went wrong, where, and what to do about it.
    """

    reason: str = "error"

    def __init__(self, message: str, *, reason: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        if reason is not None:
            self.reason = reason

    def __str__(self) -> str:
        return f"[{self.reason}] {self.message}"


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

    reason = "config"

    def __init__(self, problems: list[ConfigProblem] | ConfigProblem) -> None:
        self.problems = [problems] if isinstance(problems, ConfigProblem) else list(problems)
        lines = [str(p) for p in self.problems]
        if len(lines) == 1:
            message = lines[0]
        else:
            message = f"{len(lines)} problems:\n  " + "\n  ".join(lines)
        super().__init__(message)


class PayloadTypeError(XmlPipelineError, TypeError):
    """A ``@payload`` class declares a field whose type cannot travel as XML."""

    reason = "unsupported_type"


class XmlInputError(XmlPipelineError, ValueError):
    """XML from outside was rejected before any handler saw it.

    Attributes:
        line: the line of the input where the problem was found, when known.
        path: the element path (``/message/meta/to``) where it was found, when known.
    """

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

    def __init__(self, message: str, *, line: int | None = None, path: str | None = None) -> None:
        super().__init__(message, reason="schema_violation", line=line, path=path)


class DeliveryError(XmlPipelineError):
    """A message was not answered: the handler failed, timed out, or could not be reached.

    Attributes:
        listener: the listener where the failure happened, when known.
        thread: the opaque thread id of the failed hop, when known.
    """

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

    reason = "backend_error"


class UsageError(XmlPipelineError, ValueError):
    """The library was called the wrong way (e.g. a HandlerResponse with no target)."""

    reason = "usage"
