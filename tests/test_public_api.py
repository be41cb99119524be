"""The public surface: everything users need imports from xml_pipeline, and nothing more."""

from __future__ import annotations

import inspect
import typing

import xml_pipeline
from xml_pipeline import backends, metrics, testing

EXPECTED = {
    "ENVELOPE_NS",
    "BackendConfig",
    "BackendError",
    "BackoffSettings",
    "CircuitSettings",
    "ConfigError",
    "ConfigProblem",
    "ConversationEvent",
    "DeadLetter",
    "DeadLetterConfig",
    "DeadLetterCounts",
    "DeadLetters",
    "DeliveryError",
    "Envelope",
    "ErrorReport",
    "Event",
    "Handler",
    "HandlerMetadata",
    "HandlerResponse",
    "HandlerResult",
    "HistoryEntry",
    "HookSubscriber",
    "Hooks",
    "HopEvent",
    "Listener",
    "ListenerConfig",
    "ListenerRecovery",
    "MetricsCollector",
    "ControlConfig",
    "MetricsConfig",
    "NotFoundError",
    "Organism",
    "OrganismConfig",
    "Outcome",
    "ParseLimits",
    "PayloadSpec",
    "PayloadTypeError",
    "PermanentError",
    "PoolStats",
    "ProcessPool",
    "ProcessPoolConfig",
    "PumpStats",
    "Reason",
    "Repair",
    "RepairResult",
    "ReplayResult",
    "RetryLater",
    "RetrySettings",
    "Run",
    "RunsConfig",
    "SchemaViolation",
    "SinkError",
    "SinkStats",
    "ThreadRegistry",
    "Trace",
    "TraceHop",
    "TracingConfig",
    "UnknownIdError",
    "UsageError",
    "Worker",
    "XmlInputError",
    "XmlPipelineError",
    "check_payload",
    "from_dict",
    "from_element",
    "from_xml",
    "is_payload",
    "json_schema",
    "load_config",
    "parse_guarded",
    "payload",
    "payload_spec",
    "repair",
    "to_dict",
    "to_element",
    "to_xml",
}


def test_all_is_exactly_the_intended_names_and_sorted() -> None:
    assert set(xml_pipeline.__all__) == EXPECTED
    assert list(xml_pipeline.__all__) == sorted(
        xml_pipeline.__all__, key=lambda n: (n.upper() != n, n)
    )


def test_the_testing_helpers_are_exactly_the_intended_names() -> None:
    assert testing.__all__ == ["Capture", "Fake", "capture", "drain", "run_organism"]


def test_the_metrics_package_exports_what_its_users_configure() -> None:
    assert set(metrics.__all__) == {
        "JsonlSinkConfig",
        "MetricsCollector",
        "MetricsConfig",
        "OtlpSinkConfig",
        "Probes",
        "PrometheusSinkConfig",
        "RedisStreamSinkConfig",
        "Sink",
        "SinkConfig",
        "SinkStats",
        "Trace",
        "TraceHop",
        "TracingConfig",
        "build_tree",
    }
    for name in metrics.__all__:
        if hasattr(xml_pipeline, name):
            assert getattr(xml_pipeline, name) is getattr(metrics, name), name


def test_every_public_name_imports() -> None:
    for name in xml_pipeline.__all__:
        assert getattr(xml_pipeline, name) is not None


def test_every_error_derives_from_the_one_root_and_has_a_reason() -> None:
    for name in xml_pipeline.__all__:
        obj = getattr(xml_pipeline, name)
        if isinstance(obj, type) and issubclass(obj, Exception):
            assert issubclass(obj, xml_pipeline.XmlPipelineError), name
            assert isinstance(obj.reason, str) and obj.reason, name


def _named_types(hint: object) -> set[type]:
    """The classes a type hint names, through unions, generics and callables."""
    found: set[type] = set()
    if isinstance(hint, type):
        found.add(hint)
    for arg in typing.get_args(hint):
        if isinstance(arg, list):  # Callable[[...], R]
            for item in arg:
                found |= _named_types(item)
        else:
            found |= _named_types(arg)
    origin = typing.get_origin(hint)
    if isinstance(origin, type):
        found.add(origin)
    return found


def _public_callables() -> list[tuple[str, object]]:
    found: list[tuple[str, object]] = []
    public = [(name, getattr(xml_pipeline, name)) for name in xml_pipeline.__all__]
    public += [(f"testing.{name}", getattr(testing, name)) for name in testing.__all__]
    for name, obj in public:
        if inspect.isfunction(obj):
            found.append((name, obj))
        elif isinstance(obj, type) and obj.__module__.startswith("xml_pipeline"):
            for attr, member in vars(obj).items():
                if attr.startswith("_") and attr != "__init__":
                    continue
                if isinstance(member, property) and member.fget is not None:
                    found.append((f"{name}.{attr}", member.fget))
                elif isinstance(member, classmethod | staticmethod):
                    found.append((f"{name}.{attr}", member.__func__))
                elif inspect.isfunction(member):
                    found.append((f"{name}.{attr}", member))
    return found


def test_public_signatures_name_only_exported_or_standard_types() -> None:
    """A user can import every type a public signature names (httpx's and anyio's rule)."""
    exported = {id(getattr(xml_pipeline, n)) for n in xml_pipeline.__all__}
    exported |= {id(getattr(backends, n)) for n in backends.__all__}
    exported |= {id(getattr(metrics, n)) for n in metrics.__all__}
    exported |= {id(getattr(testing, n)) for n in testing.__all__}
    unnamed: list[str] = []
    for where, fn in _public_callables():
        try:
            hints = typing.get_type_hints(fn)
        except NameError as exc:  # a hint that names something not importable
            unnamed.append(f"{where}: {exc}")
            continue
        for hint in hints.values():
            for cls in _named_types(hint):
                ours = cls.__module__.startswith("xml_pipeline")
                if ours and id(cls) not in exported:
                    unnamed.append(f"{where} names {cls.__module__}.{cls.__qualname__}")
    assert unnamed == []
