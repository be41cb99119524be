"""xml-pipeline: asyncio message routing for agent organisms.

Listeners exchange typed XML payloads; an async pump validates and routes every message along
opaque call chains so that answers find their caller. Import everything from here.
"""

from xml_pipeline._errors import (
    BackendError,
    ConfigError,
    ConfigProblem,
    DeliveryError,
    PayloadTypeError,
    Reason,
    SchemaViolation,
    UsageError,
    XmlInputError,
    XmlPipelineError,
)
from xml_pipeline._handlers import (
    ErrorReport,
    HandlerMetadata,
    HandlerResponse,
    HistoryEntry,
    Listener,
)
from xml_pipeline._organism import Organism
from xml_pipeline._runtime.pump import DeadLetter, PumpStats
from xml_pipeline._runtime.registry import ThreadRegistry
from xml_pipeline._wire.envelope import ENVELOPE_NS, Envelope
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

__all__ = [
    "ENVELOPE_NS",
    "BackendError",
    "ConfigError",
    "ConfigProblem",
    "DeadLetter",
    "DeliveryError",
    "Envelope",
    "ErrorReport",
    "HandlerMetadata",
    "HandlerResponse",
    "HistoryEntry",
    "Listener",
    "Organism",
    "ParseLimits",
    "PayloadSpec",
    "PayloadTypeError",
    "PumpStats",
    "Reason",
    "Repair",
    "RepairResult",
    "SchemaViolation",
    "ThreadRegistry",
    "UsageError",
    "XmlInputError",
    "XmlPipelineError",
    "check_payload",
    "from_element",
    "from_xml",
    "is_payload",
    "parse_guarded",
    "payload",
    "payload_spec",
    "repair",
    "to_element",
    "to_xml",
]
