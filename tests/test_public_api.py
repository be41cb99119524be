"""The public surface: everything users need imports from xml_pipeline, and nothing more."""

from __future__ import annotations

import xml_pipeline

EXPECTED = {
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
}


def test_all_is_exactly_the_intended_names_and_sorted() -> None:
    assert set(xml_pipeline.__all__) == EXPECTED
    assert list(xml_pipeline.__all__) == sorted(
        xml_pipeline.__all__, key=lambda n: (n.upper() != n, n)
    )


def test_every_public_name_imports() -> None:
    for name in xml_pipeline.__all__:
        assert getattr(xml_pipeline, name) is not None


def test_every_error_derives_from_the_one_root_and_has_a_reason() -> None:
    for name in xml_pipeline.__all__:
        obj = getattr(xml_pipeline, name)
        if isinstance(obj, type) and issubclass(obj, Exception):
            assert issubclass(obj, xml_pipeline.XmlPipelineError), name
            assert isinstance(obj.reason, str) and obj.reason, name
