"""The v1 envelope: the exact bytes, the xmlns="" trap, round trips, and what is not an envelope."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest
from hypothesis import given, settings
from lxml import etree

from tests.wire.test_payloads import XML_TEXT, Address, Everything, Order, sample_everything
from xml_pipeline._errors import SchemaViolation, XmlInputError
from xml_pipeline._wire.envelope import ENVELOPE_NS, Envelope
from xml_pipeline._wire.parsing import ParseLimits
from xml_pipeline._wire.payloads import from_element, payload, to_xml

ORDER = Order(id=7, tags=["a", "b"], ship_to=Address(city="Oslo"))
HEAD = b'<message xmlns="https://xml-pipeline.org/ns/envelope/v1">'
WIRE = (
    HEAD + b"<meta><from>shop</from><to>shipping</to><thread>t-1</thread></meta>"
    b'<Order xmlns=""><id>7</id><tags>a</tags><tags>b</tags>'
    b"<ship_to><city>Oslo</city></ship_to></Order></message>"
)


def not_an_envelope(data: bytes) -> XmlInputError:
    with pytest.raises(XmlInputError) as info:
        Envelope.from_bytes(data)
    assert info.value.reason == "not_an_envelope"
    return info.value


def element_of(env: Envelope) -> etree._Element:
    """The payload of an envelope read from bytes: an element, not yet bound."""
    assert isinstance(env.payload, etree._Element)
    return env.payload


def envelope(meta: bytes, body: bytes = b'<Order xmlns=""/>') -> bytes:
    return HEAD + b"<meta>" + meta + b"</meta>" + body + b"</message>"


# -- the bytes ----------------------------------------------------------------------------------


def test_envelope_of_a_payload_object_is_exactly_the_v1_wire_format() -> None:
    assert Envelope("shop", "shipping", "t-1", ORDER).to_bytes() == WIRE


def test_payload_element_declares_an_empty_default_namespace_in_the_bytes() -> None:
    data = Envelope("a", "b", "t", ORDER).to_bytes()
    assert b'<Order xmlns="">' in data
    assert data.count(b'xmlns=""') == 1


def test_reparsed_payload_has_no_namespace_with_any_parser() -> None:
    data = Envelope("a", "b", "t", ORDER).to_bytes()
    for body in (etree.fromstring(data)[1], element_of(Envelope.from_bytes(data))):
        assert body.tag == "Order"
        assert etree.QName(body).namespace is None
        assert all(etree.QName(e).namespace is None for e in body.iter())


def test_lxml_alone_falls_into_the_xmlns_trap_that_to_bytes_avoids() -> None:
    # Why to_bytes writes the payload itself: an lxml-built envelope drops xmlns="" and the
    # payload moves into the envelope namespace on the next parse.
    message = etree.Element(f"{{{ENVELOPE_NS}}}message", nsmap={None: ENVELOPE_NS})
    message.append(etree.fromstring(to_xml(ORDER)))
    assert etree.fromstring(etree.tostring(message))[0].tag == f"{{{ENVELOPE_NS}}}Order"


def test_bytes_to_envelope_to_bytes_is_stable() -> None:
    env = Envelope.from_bytes(WIRE)
    assert env.to_bytes() == WIRE
    assert Envelope.from_bytes(env.to_bytes()).to_bytes() == WIRE


def test_envelope_built_from_a_payload_element_reserializes_identically() -> None:
    element = Envelope.from_bytes(WIRE).payload
    assert isinstance(element, etree._Element)
    again = Envelope("shop", "shipping", "t-1", element)
    assert again.to_bytes() == WIRE
    assert again.payload_bytes() == to_xml(ORDER).replace(b"<Order>", b'<Order xmlns="">')


def test_pretty_printed_envelope_parses_and_binds() -> None:
    data = (
        HEAD + b"\n  <meta>\n    <from>shop</from>\n    <to>shipping</to>\n"
        b"    <thread>t-1</thread>\n  </meta>\n"
        b'  <Order xmlns="">\n    <id>7</id>\n    <tags>a</tags>\n    <tags>b</tags>\n'
        b"    <ship_to><city>Oslo</city></ship_to>\n  </Order>\n</message>\n"
    )
    env = Envelope.from_bytes(data)
    assert (env.sender, env.to, env.thread) == ("shop", "shipping", "t-1")
    assert from_element(Order, env.payload) == ORDER
    assert env.to_bytes().endswith(b"  </Order></message>")  # no tail after the payload


def test_payload_element_with_more_namespace_declarations_stays_well_formed() -> None:
    data = envelope(
        b"<to>b</to>", b'<Order xmlns:q="urn:q" xmlns=""><id>1</id><q:x/></Order>'
    ).replace(HEAD, HEAD[:-1] + b' xmlns:e="urn:e">')
    env = Envelope.from_bytes(data)
    out = env.to_bytes()
    assert out.count(b'xmlns=""') == 1
    assert Envelope.from_bytes(out).to_bytes() == out


def test_payload_element_attribute_that_mentions_xmlns_is_kept_intact() -> None:
    parent = etree.Element("{urn:other}wrapper", nsmap={None: "urn:other"})
    element = etree.SubElement(parent, "Note", note=" xmlns='urn:trick'", b="1")
    data = Envelope("a", "b", "t", element).to_bytes()
    body = element_of(Envelope.from_bytes(data))
    assert body.tag == "Note"
    assert dict(body.attrib) == {"note": " xmlns='urn:trick'", "b": "1"}


def test_payload_element_from_an_lxml_tree_with_a_default_namespace_is_written_namespace_less() -> (
    None
):
    parent = etree.Element("{urn:other}wrapper", nsmap={None: "urn:other"})
    element = etree.SubElement(parent, "Address")
    etree.SubElement(element, "city").text = "Oslo"
    data = Envelope("a", "b", "t", element).to_bytes()
    body = element_of(Envelope.from_bytes(data))
    assert from_element(Address, body) == Address("Oslo")


def test_non_ascii_names_and_text_are_written_as_utf8_whether_object_or_element() -> None:
    cafe: Any = payload(tag="Café")(dataclasses.make_dataclass("Cafe", [("größe", str)]))
    obj = cafe("é 😀")
    data = Envelope("a", "b", "t", obj).to_bytes()
    assert '<Café xmlns=""><größe>é 😀</größe></Café>'.encode() in data
    element = Envelope.from_bytes(data).payload
    assert Envelope("a", "b", "t", element).to_bytes() == data
    assert from_element(cafe, element) == obj


def test_payload_element_with_a_namespace_cannot_be_written() -> None:
    element = etree.fromstring(b'<Order xmlns="urn:x"/>')
    with pytest.raises(SchemaViolation, match="has a namespace"):
        Envelope("a", "b", "t", element).to_bytes()


def test_payload_that_is_neither_a_payload_nor_an_element_is_a_type_error() -> None:
    with pytest.raises(TypeError, match="must be a @payload object or an lxml element"):
        Envelope("a", "b", "t", {"id": 7}).payload_bytes()


def test_payload_tag_names_the_root_element_of_objects_and_elements() -> None:
    assert Envelope("a", "b", "t", ORDER).payload_tag == "Order"
    assert Envelope.from_bytes(WIRE).payload_tag == "Order"


# -- text ---------------------------------------------------------------------------------------


def test_meta_text_is_always_escaped() -> None:
    env = Envelope("a<b&c>", "to\r\nx", "]]>", ORDER)
    data = env.to_bytes()
    assert b"<from>a&lt;b&amp;c&gt;</from>" in data
    assert b"<to>to&#13;\nx</to>" in data
    assert b"<thread>]]&gt;</thread>" in data
    back = Envelope.from_bytes(data)
    assert (back.sender, back.to, back.thread) == ("a<b&c>", "to\r\nx", "]]>")


def test_meta_text_xml_cannot_carry_is_refused_naming_the_field() -> None:
    with pytest.raises(SchemaViolation) as info:
        Envelope("a\x00", "b", "t", ORDER).to_bytes()
    assert info.value.path == "/message/meta/from"


def test_payload_value_xml_cannot_carry_is_refused_naming_the_field() -> None:
    with pytest.raises(SchemaViolation) as info:
        Envelope("a", "b", "t", Order(1, ["\ufffe"], Address("x"))).to_bytes()
    assert info.value.path == "/Order/tags"


@settings(max_examples=100, deadline=None)
@given(sender=XML_TEXT, to=XML_TEXT.filter(bool), thread=XML_TEXT)
def test_any_xml_text_in_meta_round_trips(sender: str, to: str, thread: str) -> None:
    data = Envelope(sender, to, thread, ORDER).to_bytes()
    back = Envelope.from_bytes(data)
    assert (back.sender, back.to, back.thread) == (sender, to, thread)
    assert from_element(Order, back.payload) == ORDER
    assert back.to_bytes() == data


def test_every_field_type_survives_an_envelope() -> None:
    obj = sample_everything(texts=[" x ", "\r"], numbers=[10**40])
    body = element_of(Envelope.from_bytes(Envelope("a", "b", "t", obj).to_bytes()))
    assert from_element(Everything, body) == obj


def test_from_and_thread_may_be_empty_or_absent() -> None:
    env = Envelope.from_bytes(envelope(b"<to>b</to>"))
    assert (env.sender, env.to, env.thread) == ("", "b", "")
    env = Envelope.from_bytes(envelope(b"<from/><to>b</to><thread></thread>"))
    assert (env.sender, env.thread) == ("", "")


# -- not an envelope ----------------------------------------------------------------------------


def test_wrong_root_says_what_is_expected() -> None:
    error = not_an_envelope(b"<Order><id>1</id></Order>")
    assert ENVELOPE_NS in str(error)
    assert error.line == 1


def test_wrong_namespace_says_what_is_expected() -> None:
    error = not_an_envelope(WIRE.replace(b"ns/envelope/v1", b"ns/envelope/v2"))
    assert f'expected <message xmlns="{ENVELOPE_NS}">' in str(error)
    error = not_an_envelope(WIRE.replace(b' xmlns="https://xml-pipeline.org/ns/envelope/v1"', b""))
    assert ENVELOPE_NS in str(error)


def test_payload_in_the_envelope_namespace_mentions_xmlns_empty() -> None:
    error = not_an_envelope(WIRE.replace(b'<Order xmlns="">', b"<Order>"))
    assert 'xmlns=""' in str(error)
    assert error.path == "/message"


def test_payload_in_another_namespace_is_not_an_envelope() -> None:
    not_an_envelope(WIRE.replace(b'<Order xmlns="">', b'<Order xmlns="urn:x">'))


def test_missing_to_is_not_an_envelope_with_line_and_path() -> None:
    error = not_an_envelope(
        HEAD + b"\n<meta>\n<from>a</from>\n</meta>\n" + b'<Order xmlns=""/></message>'
    )
    assert (error.line, error.path) == (2, "/message/meta")
    assert "<to>" in str(error)
    not_an_envelope(envelope(b"<to></to>"))


@pytest.mark.parametrize(
    ("data", "line", "path"),
    [
        (envelope(b"<to>b</to>", b'\n<A xmlns=""/>\n<B xmlns=""/>'), 1, "/message"),
        (envelope(b"<to>b</to>", b""), 1, "/message"),
        (HEAD + b"<meta><to>b</to></meta>\n<meta/>\n" + b'<A xmlns=""/></message>', 1, "/message"),
        (HEAD + b'\n<A xmlns=""/><meta><to>b</to></meta></message>', 2, "/message"),
        (envelope(b"<to>b</to>\n<extra/>"), 2, "/message/meta"),
        (envelope(b"<to>b</to>\n<to>c</to>"), 2, "/message/meta"),
        (envelope(b"<to>b</to>\n<from><x/></from>"), 2, "/message/meta"),
    ],
    ids=[
        "two payloads",
        "no payload",
        "two metas",
        "payload first",
        "extra element in meta",
        "to twice",
        "element inside from",
    ],
)
def test_malformed_envelope_structure_is_not_an_envelope_with_line_and_path(
    data: bytes, line: int, path: str
) -> None:
    error = not_an_envelope(data)
    assert (error.line, error.path) == (line, path)


def test_hostile_or_broken_bytes_keep_their_own_reason() -> None:
    with pytest.raises(XmlInputError) as info:
        Envelope.from_bytes(b"<!DOCTYPE message>" + WIRE)
    assert info.value.reason == "doctype"
    with pytest.raises(XmlInputError) as info:
        Envelope.from_bytes(WIRE[:-5])
    assert info.value.reason == "malformed"
    with pytest.raises(XmlInputError) as info:
        Envelope.from_bytes(WIRE, ParseLimits(max_bytes=100))
    assert info.value.reason == "too_large"


def test_payload_that_violates_its_schema_is_refused_when_bound() -> None:
    env = Envelope.from_bytes(WIRE.replace(b"<id>7</id>", b"<id>seven</id>"))
    with pytest.raises(SchemaViolation) as info:
        from_element(Order, env.payload)
    assert (info.value.reason, info.value.path) == ("schema_violation", "/Order/id")


def test_from_element_reads_a_tree_with_comments_from_plain_lxml() -> None:
    data = WIRE.replace(b"<meta>", b"<!-- c --><meta><?pi x?>").replace(
        b"</message>", b"<!-- c --></message>"
    )
    env = Envelope.from_element(etree.fromstring(data))
    assert (env.sender, env.to, env.thread) == ("shop", "shipping", "t-1")
    assert from_element(Order, env.payload) == ORDER


def test_envelope_accepts_str_input() -> None:
    assert Envelope.from_bytes(WIRE.decode()).to_bytes() == WIRE


@pytest.mark.parametrize("to", ["calculator.add", " spaced ", "a b"])
def test_listener_names_are_kept_exactly_as_sent(to: str) -> None:
    assert Envelope.from_bytes(Envelope("x", to, "t", ORDER).to_bytes()).to == to
