"""Payload classes and fields named with non-ASCII letters travel every path intact.

The kind of fault: an lxml serialization without an encoding writes ASCII, and a name such as
``Café`` comes out as ``<Caf&#233;>``, which no parser reads back. So every ``tostring`` in the
library names its encoding (pinned by reading the source), and generated classes with
non-ASCII class and field names and values go through every path: ``to_xml``/``from_xml``,
envelope bytes, history entries, ``request`` and ``inject`` with the history read by a handler,
a ``cpu_bound`` listener in the process pool, and the ``organism`` command.

Names that XML cannot carry, or that libxml2's XSD checker refuses (it reads names by the XML
1.0 4th edition tables), are refused when the class is decorated, never later.
"""

from __future__ import annotations

import ast
import dataclasses
import keyword
import shutil
import subprocess
import sys
import unicodedata
from pathlib import Path
from typing import Any

import anyio
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from lxml import etree

import xml_pipeline
from tests.unicode_handlers import Café, Écho, Ωμέγα, derrière, devant, 注文
from tests.wire.test_payloads import XML_TEXT
from xml_pipeline import (
    Envelope,
    HandlerMetadata,
    Listener,
    Organism,
    PayloadTypeError,
    from_xml,
    payload,
    payload_spec,
    to_xml,
)
from xml_pipeline._config import ProcessPoolConfig
from xml_pipeline._wire.history import decode_entry, encode_entry
from xml_pipeline._wire.parsing import parse_guarded

LIBRARY = Path(xml_pipeline.__file__).parent

# -- every serialization names its encoding -----------------------------------------------------


def _tostring_calls() -> list[tuple[str, int, ast.Call]]:
    calls = []
    for source in sorted(LIBRARY.rglob("*.py")):
        tree = ast.parse(source.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.Call):
                name = getattr(node.func, "attr", None) or getattr(node.func, "id", None)
                if name in ("tostring", "tounicode", "write", "tostringlist"):
                    calls.append((source.name, node.lineno, node))
    return calls


def test_every_lxml_serialization_in_the_library_names_its_encoding() -> None:
    calls = [(file, line) for file, line, call in _tostring_calls() if _is_lxml(call)]
    assert calls, "the scan finds the serializations (history, schema, envelope)"
    unnamed = [
        f"{file}:{line}"
        for file, line, call in _tostring_calls()
        if _is_lxml(call) and not any(k.arg == "encoding" for k in call.keywords)
    ]
    assert unnamed == [], "lxml writes ASCII by default: name the encoding"


def _is_lxml(call: ast.Call) -> bool:
    owner = getattr(call.func, "value", None)
    return getattr(owner, "id", None) == "etree" or getattr(call.func, "id", None) == "tostring"


# -- generated classes ---------------------------------------------------------------------------

# letters of several scripts, all in the XML 1.0 4th edition tables libxml2's XSD checker uses
LETTERS = st.sampled_from(
    "ÀÉÎÕÜßàçéèêëïñôöùûüÿĀăĐęŁńőœŠšŽžΑΒΓΔΩάέήίαβγδεζηθλμπσωАБВГДЖЯабвгджюя"
    "אבגדהابتثجअआइकखกขคあいうえおアイウエオ一丁七万丈三上下不与丐丑世注文品名"
)
NAME_CHARS = st.one_of(LETTERS, st.sampled_from("abcXYZ_0123456789"))
NAMES = st.builds("{}{}".format, LETTERS, st.text(NAME_CHARS, max_size=6)).filter(
    lambda n: n.isidentifier() and not keyword.iskeyword(n)
)
FIELD_TYPES = st.sampled_from([str, int, bool, list[str]])


@st.composite
def classes(draw: st.DrawFn) -> type:
    """A ``@payload`` class with a non-ASCII name and one to four non-ASCII fields."""
    names = draw(st.lists(NAMES, min_size=1, max_size=4, unique=True))
    fields = [(name, draw(FIELD_TYPES)) for name in names]
    cls = dataclasses.make_dataclass(draw(NAMES), fields)
    cls.__module__ = __name__
    return payload(cls)


VALUES: dict[Any, st.SearchStrategy[Any]] = {
    str: XML_TEXT,
    int: st.integers(),
    bool: st.booleans(),
    list[str]: st.lists(XML_TEXT, max_size=2),
}


@st.composite
def instances(draw: st.DrawFn) -> object:
    cls = draw(classes())
    values = {f.name: draw(VALUES[f.type]) for f in dataclasses.fields(cls)}
    return cls(**values)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(instances())
def test_generated_class_round_trips_through_xml_xsd_example_envelope_and_history(
    obj: Any,
) -> None:
    cls, spec = type(obj), payload_spec(obj)
    data = to_xml(obj)
    assert from_xml(cls, data) == obj
    assert spec.schema.validate(parse_guarded(data))
    example = spec.example()
    assert spec.schema.validate(parse_guarded(example)), example
    assert from_xml(cls, example) is not None
    for name in (spec.tag, *(f.name for f in spec.fields)):
        assert name in spec.describe()

    envelope = Envelope("expéditeur", "destinataire", "fil", obj).to_bytes()
    back = Envelope.from_bytes(envelope)
    assert back.payload_tag == spec.tag
    assert from_xml(cls, back.payload_bytes()) == obj
    again = Envelope.from_bytes(Envelope("a", "b", "", back.payload).to_bytes())  # as an element
    assert from_xml(cls, again.payload_bytes()) == obj

    entry = decode_entry(encode_entry("expéditeur", "destinataire", data))
    assert (entry.sender, entry.to, entry.payload_tag) == ("expéditeur", "destinataire", spec.tag)
    assert from_xml(cls, entry.payload) == obj  # same XML, not always the same bytes (<a/>)


def test_history_entry_of_a_payload_named_cafe_is_the_payload_as_written() -> None:
    data = to_xml(Café(prénom="Zoë", größe=3))
    entry = decode_entry(encode_entry("a", "b", data))
    written = "<Café><prénom>Zoë</prénom><größe>3</größe><ça_va>true</ça_va></Café>"
    assert entry.payload == data == written.encode()
    assert entry.payload_tag == "Café"


def _two_listeners(cls: type, *, cpu_bound: bool = False) -> list[Listener]:
    return [
        Listener("devant", cls, devant, peers=("derrière",)),
        Listener("derrière", cls, derrière, cpu_bound=cpu_bound, timeout_seconds=60),
    ]


def _check_echo(echo: object, sent: object) -> None:
    tag = payload_spec(sent).tag
    assert isinstance(echo, Écho)
    assert echo.étiquettes == [f"_external>devant:{tag}", f"devant>derrière:{tag}"]
    for text in echo.charges:
        assert from_xml(type(sent), text.encode()) == sent


@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(instances())
def test_generated_class_travels_request_and_inject_and_handlers_read_its_history(
    obj: Any,
) -> None:
    seen: list[list[bytes]] = []

    async def record(msg: object, meta: HandlerMetadata) -> None:
        seen.append([e.payload for e in await meta.history()])

    async def scenario() -> None:
        listeners = [*_two_listeners(type(obj)), Listener("enregistreur", type(obj), record)]
        async with Organism(listeners) as org:
            _check_echo(await org.request("devant", obj, timeout=10), obj)
            body = to_xml(obj).replace(b">", b' xmlns="">', 1)
            await org.inject(
                b'<message xmlns="https://xml-pipeline.org/ns/envelope/v1"><meta>'
                b"<to>enregistreur</to></meta>" + body + b"</message>"
            )
            await org.wait_idle()

    anyio.run(scenario)
    assert len(seen) == 1 and len(seen[0]) == 1
    assert from_xml(type(obj), seen[0][0]) == obj


FIXED = [
    Café(prénom="Zoë & <Ñ>", größe=-3, ça_va=False),
    Ωμέγα(λέξη="λόγος\r\n", αριθμοί=[1, 2]),
    注文(品名="茶", количество=2),
]


@pytest.mark.anyio
@pytest.mark.parametrize("obj", FIXED, ids=lambda o: type(o).__name__)
async def test_cpu_bound_listener_reads_and_answers_non_ascii_payloads_in_the_pool(
    obj: object,
) -> None:
    pool = ProcessPoolConfig(workers=1)
    async with Organism(_two_listeners(type(obj), cpu_bound=True), process_pool=pool) as org:
        _check_echo(await org.request("devant", obj, timeout=60), obj)


ORGANISM = """\
organism:
  name: unicode
listeners:
  - name: devant
    payload_class: unicode_handlers.{cls}
    handler: unicode_handlers.devant
    peers: [derrière]
  - name: derrière
    payload_class: unicode_handlers.{cls}
    handler: unicode_handlers.derrière
    cpu_bound: {cpu_bound}
"""


@pytest.mark.parametrize(("obj", "cpu_bound"), [(FIXED[0], False), (FIXED[2], True)])
def test_the_organism_command_sends_and_prints_non_ascii_payloads(
    tmp_path: Path, obj: object, cpu_bound: bool
) -> None:
    shutil.copy(Path(__file__).parents[1] / "unicode_handlers.py", tmp_path)
    yaml = tmp_path / "organism.yaml"
    spec = payload_spec(obj)
    yaml.write_text(
        ORGANISM.format(cls=spec.cls.__name__, cpu_bound=str(cpu_bound).lower()), encoding="utf-8"
    )
    command = [sys.executable, "-m", "xml_pipeline", "run", str(yaml), "--to", "devant"]
    done = subprocess.run(
        [*command, "--send", to_xml(obj).decode()],
        capture_output=True,
        timeout=120,
        check=False,
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr.decode(errors="replace")
    answer = etree.fromstring(done.stdout.strip())
    assert answer.tag == "Écho"
    charges = [c.text or "" for c in answer.iter("charges")]
    assert len(charges) == 2
    for text in charges:
        assert to_xml(from_xml(type(obj), text.encode())) == to_xml(obj)


# -- names XML or its XSD cannot carry are refused at decoration ---------------------------------

# what dataclasses can build: identifiers as Python source reads them (NFKC-normalized)
IDENTIFIERS = st.text(
    st.characters(categories=("Lu", "Ll", "Lt", "Lm", "Lo", "Nl", "Mn", "Mc", "Nd", "Pc", "No")),
    min_size=1,
    max_size=4,
).filter(
    lambda n: (
        n.isidentifier() and not keyword.iskeyword(n) and unicodedata.normalize("NFKC", n) == n
    )
)


@settings(max_examples=300, deadline=None)
@given(IDENTIFIERS, IDENTIFIERS)
def test_a_class_with_any_identifier_names_is_refused_at_decoration_or_works_everywhere(
    class_name: str, field_name: str
) -> None:
    cls = dataclasses.make_dataclass(class_name, [(field_name, str)])
    cls.__module__ = __name__
    try:
        payload(cls)
    except PayloadTypeError as exc:
        assert "XML" in str(exc) and (class_name in str(exc) or field_name in str(exc))
        return
    spec = payload_spec(cls)
    obj = cls(**{field_name: "é"})
    data = to_xml(obj)
    assert spec.schema.validate(parse_guarded(data))
    assert from_xml(cls, data) == obj
    assert from_xml(cls, spec.example()) is not None
    assert from_xml(cls, decode_entry(encode_entry("a", "b", data)).payload) == obj


@pytest.mark.parametrize(
    ("class_name", "field_name", "bad"),
    [
        ("\u13a0sdi", "name", "\u13a0sdi"),  # Cherokee: Unicode 3.0, after the XSD checker's tables
        ("Order", "ẞig", "ẞig"),  # capital sharp s: Unicode 5.1
        ("Order", "x𐐀", "x𐐀"),  # an astral letter (Deseret)
        ("ªb", "name", "ªb"),  # a letter to Python, not an XML name start
        ("Order", "xmlns", "xmlns"),  # reserved by XML
    ],
)
def test_a_name_xml_or_libxml2_would_not_read_is_refused_at_decoration_naming_it(
    class_name: str, field_name: str, bad: str
) -> None:
    cls = dataclasses.make_dataclass(class_name, [(field_name, str)])
    with pytest.raises(PayloadTypeError) as info:
        payload(cls)
    assert repr(bad) in str(info.value) or f".{bad}:" in str(info.value)
    assert "rename" in str(info.value) or "XML" in str(info.value)
