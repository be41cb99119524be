"""The v1 envelope: ``<message>`` with ``<meta>`` (from, to, thread) and one payload element.

Wire format, compatible with upstream xml-pipeline v1::

    <message xmlns="https://xml-pipeline.org/ns/envelope/v1">
      <meta><from>a</from><to>b</to><thread>t</thread></meta>
      <Payload xmlns="">...</Payload>
    </message>

The payload element has no namespace. lxml does not write ``xmlns=""`` on a namespace-less
child of an element that declares a default namespace, so a tree-built envelope would move the
payload into the envelope namespace on the next parse; `Envelope.to_bytes` therefore writes
the payload on its own and declares ``xmlns=""`` on it explicitly.
"""

from __future__ import annotations

from dataclasses import dataclass

from lxml import etree

from xml_pipeline.codecs import escape_text
from xml_pipeline.errors import XmlInputError
from xml_pipeline.parsing import ParseLimits, parse_guarded
from xml_pipeline.payloads import is_payload, payload_spec, to_xml

__all__ = ["ENVELOPE_NS", "Envelope"]

ENVELOPE_NS = "https://xml-pipeline.org/ns/envelope/v1"
_N = f"{{{ENVELOPE_NS}}}"
_MESSAGE, _META = f"{_N}message", f"{_N}meta"
_FROM, _TO, _THREAD = f"{_N}from", f"{_N}to", f"{_N}thread"
_HEAD = f'<message xmlns="{ENVELOPE_NS}"><meta>'.encode()


@dataclass(frozen=True, slots=True)
class Envelope:
    """One message: who sent it, to whom, on which thread, and its payload.

    ``payload`` is a ``@payload`` object, or an lxml element when the envelope came from
    bytes and has not been bound to a class yet.
    """

    sender: str
    to: str
    thread: str
    payload: object

    @property
    def payload_tag(self) -> str:
        """The payload's root element name."""
        if isinstance(self.payload, etree._Element):
            return str(self.payload.tag)
        return payload_spec(self.payload).tag

    def payload_bytes(self) -> bytes:
        """The payload alone, as XML bytes."""
        if isinstance(self.payload, etree._Element):
            data: bytes = etree.tostring(self.payload)
            return data
        if is_payload(self.payload):
            return to_xml(self.payload)
        raise TypeError(
            f"envelope payload must be a @payload object or an lxml element, "
            f"not {type(self.payload).__qualname__}"
        )

    def to_bytes(self) -> bytes:
        """Serialize to the v1 wire format (UTF-8, no declaration).

        Raises:
            SchemaViolation: a value cannot be written as XML (names the field).
        """
        body = self.payload_bytes()
        tag = self.payload_tag.encode()
        start = len(tag) + 1
        if not body.startswith(b' xmlns=""', start):
            body = body[:start] + b' xmlns=""' + body[start:]
        return b"".join(
            (
                _HEAD,
                b"<from>", escape_text(self.sender, "meta/from").encode(), b"</from>",
                b"<to>", escape_text(self.to, "meta/to").encode(), b"</to>",
                b"<thread>", escape_text(self.thread, "meta/thread").encode(), b"</thread>",
                b"</meta>", body, b"</message>",
            )
        )  # fmt: skip

    @classmethod
    def from_bytes(cls, data: bytes | str, limits: ParseLimits | None = None) -> Envelope:
        """Parse an envelope from outside with the guarded parser.

        The payload stays an element; the pump validates and binds it for its target.
        ``from`` and ``thread`` may be empty or absent; ``to`` is required.

        Raises:
            XmlInputError: too large, malformed, DOCTYPE, too deep, or ``not_an_envelope``
                (with the element path and line of what is wrong and what was expected).
        """
        root = parse_guarded(data, limits)
        return cls.from_element(root)

    @classmethod
    def from_element(cls, root: etree._Element) -> Envelope:
        """Read an envelope from an already parsed (guarded) tree.

        Raises:
            XmlInputError: ``not_an_envelope``, saying what is wrong and where.
        """
        if root.tag != _MESSAGE:
            raise _not_envelope(
                f'root element is <{_name(root.tag)}>; expected <message xmlns="{ENVELOPE_NS}">',
                root,
                "/",
            )
        children = [c for c in root if isinstance(c.tag, str)]
        if len(children) != 2 or children[0].tag != _META:
            raise _not_envelope(
                "<message> must hold <meta> followed by exactly one payload element",
                root,
                "/message",
            )
        meta, body = children
        fields: dict[str, str] = {}
        for child in meta:
            if child.tag in (_FROM, _TO, _THREAD) and len(child) == 0:
                fields[child.tag] = (child.text or "").strip()
            elif isinstance(child.tag, str):
                raise _not_envelope(
                    f"unexpected <{_name(child.tag)}> in <meta> (expected from, to, thread)",
                    child,
                    "/message/meta",
                )
        if not fields.get(_TO):
            raise _not_envelope(
                "<meta> has no <to>: name the target listener", meta, "/message/meta"
            )
        tag = body.tag
        if not isinstance(tag, str) or tag.startswith("{"):
            hint = (
                ' (it inherited the envelope namespace: write xmlns="" on it)'
                if isinstance(tag, str) and tag.startswith(_N)
                else ""
            )
            raise _not_envelope(
                f"payload <{_name(tag)}> must have no namespace{hint}", body, "/message"
            )
        return cls(fields.get(_FROM, ""), fields[_TO], fields.get(_THREAD, ""), body)


def _name(tag: object) -> str:
    text = str(tag)
    return text.replace(_N, "") if text.startswith(_N) else text


def _not_envelope(message: str, element: etree._Element, path: str) -> XmlInputError:
    return XmlInputError(message, reason="not_an_envelope", line=element.sourceline, path=path)
