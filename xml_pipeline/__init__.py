"""xml-pipeline: asyncio message routing for agent organisms.

Listeners exchange typed XML payloads; an async pump validates and routes every message along
opaque call chains so that answers find their caller. Import everything from here (and the
testing helpers from ``xml_pipeline.testing``, backends from ``xml_pipeline.backends``, sink
configs from ``xml_pipeline.metrics``): every
module whose name starts with ``_`` is private and may change in any release.
"""

from xml_pipeline._config import ListenerConfig, OrganismConfig, load_config
from xml_pipeline._dead_letters import DeadLetters, ReplayResult
from xml_pipeline._errors import (
    BackendError,
    ConfigError,
    ConfigProblem,
    DeliveryError,
    NotFoundError,
    PayloadTypeError,
    PermanentError,
    Reason,
    RetryLater,
    SchemaViolation,
    SinkError,
    UnknownIdError,
    UsageError,
    XmlInputError,
    XmlPipelineError,
)
from xml_pipeline._handlers import (
    ErrorReport,
    Handler,
    HandlerMetadata,
    HandlerResponse,
    HandlerResult,
    HistoryEntry,
    Listener,
)
from xml_pipeline._organism import Organism
from xml_pipeline._runtime.hooks import ConversationEvent, Event, Hooks, HookSubscriber, HopEvent
from xml_pipeline._runtime.outbox import Outcome
from xml_pipeline._runtime.outcomes import PumpStats
from xml_pipeline._runtime.pool import PoolStats, ProcessPool
from xml_pipeline._runtime.recovery import ListenerRecovery
from xml_pipeline._runtime.registry import ThreadRegistry
from xml_pipeline._runtime.runs import Run, Worker
from xml_pipeline._settings import (
    BackendConfig,
    BackoffSettings,
    CircuitSettings,
    DeadLetterConfig,
    ProcessPoolConfig,
    RetrySettings,
    RunsConfig,
)
from xml_pipeline._wire.dicts import from_dict, to_dict
from xml_pipeline._wire.envelope import ENVELOPE_NS, Envelope
from xml_pipeline._wire.json_schema import json_schema
from xml_pipeline._wire.parsing import ParseLimits, parse_guarded
from xml_pipeline._wire.payloads import (
    PayloadSpec,
    check_payload,
    from_element,
    from_xml,
    is_payload,
    payload,
    payload_spec,
    to_element,
    to_xml,
)
from xml_pipeline._wire.repair import Repair, RepairResult, repair
from xml_pipeline.backends.base import DeadLetter, DeadLetterCounts
from xml_pipeline.control import ControlConfig
from xml_pipeline.metrics import (
    MetricsCollector,
    MetricsConfig,
    SinkStats,
    Trace,
    TraceHop,
    TracingConfig,
)

__all__ = [
    "ENVELOPE_NS",
    "BackendConfig",
    "BackendError",
    "BackoffSettings",
    "CircuitSettings",
    "ConfigError",
    "ConfigProblem",
    "ControlConfig",
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
]
