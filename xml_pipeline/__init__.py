"""xml-pipeline: asyncio message routing for agent organisms.

Listeners exchange typed XML payloads; an async pump validates and routes every message along
opaque call chains so that answers find their caller. Import everything from here.
"""

from xml_pipeline.envelope import ENVELOPE_NS, Envelope
from xml_pipeline.errors import (
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
from xml_pipeline.handlers import (
    ErrorReport,
    HandlerMetadata,
    HandlerResponse,
    HistoryEntry,
    Listener,
)
from xml_pipeline.organism import Organism
from xml_pipeline.parsing import ParseLimits, parse_guarded
from xml_pipeline.payloads import (
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
from xml_pipeline.pump import DeadLetter, PumpStats
from xml_pipeline.registry import ThreadRegistry
from xml_pipeline.repair import Repair, RepairResult, repair

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
