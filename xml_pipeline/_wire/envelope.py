"""The v1 envelope: ``<message>`` with ``<meta>`` (from, to, thread) and one payload element.

Wire format, compatible with upstream xml-pipeline v1::

    <message xmlns="https://xml-pipeline.org/ns/envelope/v1">
      <meta><from>a</from><to>b</to><thread>t</thread></meta>
      <Payload xmlns="">...</Payload>
    </message>

``<meta>`` may also hold ``<traceparent>`` after ``<thread>``: the caller's W3C trace context
(`xml_pipeline._wire.traceparent`). It is optional and written only when there is one, so an
envelope without it is byte for byte what it was; this reader keeps its text as sent (checked
by the pump, never a reason to refuse the envelope).

The payload element has no namespace. lxml does not write ``xmlns=""`` on a namespace-less
child of an element that declares a default namespace, so a tree-built envelope would move the
payload into the envelope namespace on the next parse; `Envelope.to_bytes` therefore writes
the payload on its own and declares ``xmlns=""`` on it explicitly (replacing any default
namespace declaration lxml copied onto an element payload from its old parents).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from lxml import etree

from xml_pipeline._errors import SchemaViolation, XmlInputError
from xml_pipeline._wire.codecs import escape_text
from xml_pipeline._wire.parsing import ParseLimits, parse_guarded
from xml_pipeline._wire.payloads import is_payload, payload_spec, to_xml

__all__ = ["ENVELOPE_NS", "Envelope", "envelope_bytes", "envelope_head"]

ENVELOPE_NS = "https://xml-pipeline.org/ns/envelope/v1"
_N = f"{{{ENVELOPE_NS}}}"
_MESSAGE, _META = f"{_N}message", f"{_N}meta"
_FROM, _TO, _THREAD = f"{_N}from", f"{_N}to", f"{_N}thread"
_TRACEPARENT = f"{_N}traceparent"
_META_FIELDS = {_FROM: "from", _TO: "to", _THREAD: "thread"}
_HEAD = f'<message xmlns="{ENVELOPE_NS}"><meta>'.encode()
_ATTRIBUTE = re.compile(rb"""\s+([^\s=/>]+)\s*=\s*(?:"[^"]*"|'[^']*')""")


@dataclass(frozen=True, slots=True)
class Envelope:
    """One message: who sent it, to whom, on which thread, and its payload.

    ``payload`` is a ``@payload`` object, or an lxml element when the envelope came from
    bytes and has not been bound to a class yet. ``traceparent`` is the W3C trace context it
    carries, as sent ("" for none; not checked here: see `xml_pipeline._wire.traceparent`).
    """

    sender: str
    to: str
    thread: str
    payload: object
    traceparent: str = ""

    @property
    def payload_tag(self) -> str:
        """The payload's root element name."""
        if isinstance(self.payload, etree._Element):
            return str(self.payload.tag)
        return payload_spec(self.payload).tag

    def payload_bytes(self) -> bytes:
        """The payload alone, as XML bytes."""
        if isinstance(self.payload, etree._Element):
            # UTF-8 like to_xml; lxml's default (ASCII) writes non-ASCII names as broken refs
            data: bytes = etree.tostring(self.payload, encoding="UTF-8", with_tail=False)
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
            SchemaViolation: a value cannot be written as XML (names the field), or an element
                payload has a namespace.
        """
        if not isinstance(self.payload, etree._Element):
            return envelope_bytes(
                self.sender, self.to, self.thread, self.payload_bytes(), self.traceparent
            )
        body = self.payload_bytes()
        tag = self.payload_tag
        if tag.startswith("{"):
            raise SchemaViolation(
                f"payload element <{tag}> has a namespace; payloads have none", path="/message"
            )
        start = len(tag.encode()) + 1
        if not body.startswith(b' xmlns=""', start):
            # an element payload may carry the default namespace of its old parents: drop it
            end = body.index(b">")  # ends the start tag: lxml escapes '>' in attribute values
            attrs = _ATTRIBUTE.sub(_drop_default_ns, body[start:end])
            body = b"".join((body[:start], b' xmlns=""', attrs, body[end:]))
        return _wrap(self.sender, self.to, self.thread, body, self.traceparent)

    @classmethod
    def from_bytes(cls, data: bytes | str, limits: ParseLimits | None = None) -> Envelope:
        """Parse an envelope from outside with the guarded parser.

        The payload stays an element; the pump validates and binds it for its target.
        ``from``, ``thread`` and ``traceparent`` may be empty or absent; ``to`` is required.

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
        if len(root) == 2:
            # the envelope as `to_bytes` writes it, read with as few element proxies as possible
            meta, body = root[0], root[1]  # indexing: a third of the cost of unpacking
            if meta.tag == _META and len(meta) == 3:
                sender, to, thread = meta[0], meta[1], meta[2]
                if (
                    sender.tag == _FROM
                    and to.tag == _TO
                    and thread.tag == _THREAD
                    and not (len(sender) or len(to) or len(thread))
                    and (target := to.text)
                    and type(tag := body.tag) is str
                    and tag[0] != "{"
                ):
                    return _new_envelope(cls, sender.text or "", target, thread.text or "", body)
        return cls._read_checked(root)

    @classmethod
    def _read_checked(cls, root: etree._Element) -> Envelope:
        """`from_element` for any other shape: accepts what it may, says what is wrong."""
        meta = body = None
        traceparent: list[str] = []
        if len(root) == 2:
            meta, body = root[0], root[1]
            mtag, tag = meta.tag, body.tag
        if meta is None or not isinstance(mtag, str) or not isinstance(tag, str):
            # a tree not from parse_guarded may hold comments and processing instructions
            parts = [c for c in root if isinstance(c.tag, str)]
            if len(parts) != 2:
                raise _not_envelope(
                    "<message> must hold <meta> followed by exactly one payload element "
                    f"(found {len(parts)} elements)",
                    root,
                    "/message",
                )
            meta, body = parts
            mtag, tag = meta.tag, body.tag
        if mtag != _META:
            raise _not_envelope(
                f"<message> must start with <meta>, found <{_name(mtag)}>", meta, "/message"
            )
        fields: dict[str, str] = {}
        for child in meta:
            ctag = child.tag
            if ctag in _META_FIELDS and ctag not in fields and len(child) == 0:
                fields[ctag] = child.text or ""  # kept as sent: ids may have spaces at the ends
            elif ctag == _TRACEPARENT:
                # never refused for it: what is odd (elements inside, twice) is kept so that
                # the pump finds it malformed, counts and ignores it
                traceparent.append("".join(child.itertext()) if len(child) else child.text or "")
            elif isinstance(ctag, str):
                if ctag not in _META_FIELDS:
                    what = f"unexpected <{_name(ctag)}> (expected from, to, thread, traceparent)"
                elif ctag in fields:
                    what = f"<{_META_FIELDS[ctag]}> appears twice"
                else:
                    what = f"<{_META_FIELDS[ctag]}> must hold text only"
                raise _not_envelope(f"{what} in <meta>", child, "/message/meta")
        if not fields.get(_TO):
            raise _not_envelope(
                "<meta> has no <to>: name the target listener", meta, "/message/meta"
            )
        if tag.startswith("{"):
            hint = (
                ' (it inherited the envelope namespace: write xmlns="" on it)'
                if tag.startswith(_N)
                else ""
            )
            raise _not_envelope(
                f"payload <{_name(tag)}> must have no namespace{hint}", body, "/message"
            )
        return cls(
            fields.get(_FROM, ""), fields[_TO], fields.get(_THREAD, ""), body, ",".join(traceparent)
        )


_SET_SENDER, _SET_TO, _SET_THREAD, _SET_PAYLOAD, _SET_TRACEPARENT = (
    getattr(Envelope, name).__set__ for name in ("sender", "to", "thread", "payload", "traceparent")
)


def _new_envelope(cls: type[Envelope], sender: str, to: str, thread: str, body: object) -> Envelope:
    # what the frozen dataclass __init__ does, at half the cost: this runs for every envelope in
    env = object.__new__(cls)
    _SET_SENDER(env, sender)
    _SET_TO(env, to)
    _SET_THREAD(env, thread)
    _SET_PAYLOAD(env, body)
    _SET_TRACEPARENT(env, "")
    return env


def _drop_default_ns(attribute: re.Match[bytes]) -> bytes:
    return b"" if attribute.group(1) == b"xmlns" else attribute.group(0)


def _name(tag: object) -> str:
    text = str(tag)
    return text.replace(_N, "") if text.startswith(_N) else text


def _not_envelope(message: str, element: etree._Element, path: str) -> XmlInputError:
    return XmlInputError(message, reason="not_an_envelope", line=element.sourceline, path=path)


def envelope_bytes(
    sender: str, to: str, thread: str, payload_xml: bytes, traceparent: str = ""
) -> bytes:
    """The v1 envelope around payload bytes written by `to_xml`.

    `to_xml` writes the root start tag bare (``<Tag>``), so ``xmlns=""`` goes right before its
    ``>``; this skips building an `Envelope` when the payload is already serialized.

    Raises:
        SchemaViolation: ``sender``, ``to``, ``thread`` or ``traceparent`` holds a character
            XML cannot carry.
    """
    end = payload_xml.index(b">")
    body = b"".join((payload_xml[:end], b' xmlns=""', payload_xml[end:]))
    return _wrap(sender, to, thread, body, traceparent)


def envelope_head(sender: str, to: str, thread: str, traceparent: str = "") -> bytes:
    """The envelope's bytes up to its payload: ``<message ...><meta>...</meta>``
    (``<traceparent>`` only when one is given).

    Raises:
        SchemaViolation: ``sender``, ``to``, ``thread`` or ``traceparent`` holds a character
            XML cannot carry.
    """
    trace = b""
    if traceparent:
        text = escape_text(traceparent, "/message/meta/traceparent").encode()
        trace = b"<traceparent>" + text + b"</traceparent>"
    return b"".join(
        (
            _HEAD,
            b"<from>", escape_text(sender, "/message/meta/from").encode(), b"</from>",
            b"<to>", escape_text(to, "/message/meta/to").encode(), b"</to>",
            b"<thread>", escape_text(thread, "/message/meta/thread").encode(), b"</thread>",
            trace, b"</meta>",
        )
    )  # fmt: skip


def _wrap(sender: str, to: str, thread: str, body: bytes, traceparent: str = "") -> bytes:
    return b"".join((envelope_head(sender, to, thread, traceparent), body, b"</message>"))
