"""The guarded parser: hostile and broken input is rejected with its reason, touching nothing.

Tests pin reason codes only; how fast each rejection is lives in ``benchmarks/bench_xml.py``.
"""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
from lxml import etree

from xml_pipeline._errors import XmlInputError, XmlPipelineError
from xml_pipeline._settings import OrganismSettings
from xml_pipeline._wire import parsing
from xml_pipeline._wire.parsing import DEFAULT_MAX_BYTES, ParseLimits, parse_guarded


def _laughs() -> str:
    entities = ['<!ENTITY lol0 "lol">']
    for i in range(1, 10):
        entities.append(f'<!ENTITY lol{i} "{f"&lol{i - 1};" * 10}">')
    return f'<?xml version="1.0"?><!DOCTYPE lolz [{"".join(entities)}]><lolz>&lol9;</lolz>'


LAUGHS = _laughs()  # ten levels of ten: 10**9 "lol"s if expanded


def rejected(data: bytes | str, limits: ParseLimits | None = None) -> XmlInputError:
    with pytest.raises(XmlInputError) as info:
        parse_guarded(data, limits)
    return info.value


def utf7(text: str) -> bytes:
    """``text`` in UTF-7 with every ``<`` and ``>`` encoded, so no byte scan can see markup."""
    body = text.replace("<", "+ADw-").replace(">", "+AD4-")
    return b'<?xml version="1.0" encoding="UTF-7"?>' + body.encode("ascii")


@pytest.fixture
def canary(tmp_path: Path) -> tuple[Path, str]:
    """A file no parse may read; its content is not a DTD, so reading it would show."""
    secret = "CANARY-5e1f0c"
    path = tmp_path / "canary.dtd"
    path.write_text(f"{secret} <not a dtd>")
    return path, secret


# -- DOCTYPE, entities, external resources --------------------------------------------------------


def test_billion_laughs_is_rejected_as_doctype() -> None:
    assert rejected(LAUGHS).reason == "doctype"


@pytest.mark.parametrize("encoding", ["utf-16", "utf-16-be", "utf-32"])
def test_billion_laughs_in_a_wide_encoding_is_rejected_as_doctype(encoding: str) -> None:
    declared = LAUGHS.replace('"1.0"', f'"1.0" encoding="{encoding.upper()}"')
    data = declared.encode(encoding)
    assert b"<!DOCTYPE" not in data
    assert rejected(data).reason == "doctype"


def test_billion_laughs_hidden_from_every_byte_scan_is_rejected_as_doctype() -> None:
    data = utf7(LAUGHS.removeprefix('<?xml version="1.0"?>'))
    assert rejected(data).reason == "doctype"


def test_external_entity_never_reads_the_file(canary: tuple[Path, str]) -> None:
    path, secret = canary
    doc = f'<!DOCTYPE m [<!ENTITY e SYSTEM "{path.as_uri()}">]><m>&e;</m>'
    for data in (doc.encode(), doc.encode("utf-16")):
        error = rejected(data)
        assert error.reason == "doctype"
        assert secret not in str(error)


@pytest.mark.parametrize(
    "doc",
    [
        '<!DOCTYPE m SYSTEM "{uri}"><m/>',
        '<!DOCTYPE m [<!ENTITY % p SYSTEM "{uri}"> %p;]><m/>',
        '<!DOCTYPE m [<!ENTITY e SYSTEM "{uri}">]><m>&e;</m>',
    ],
    ids=["external DTD", "parameter entity", "general entity"],
)
def test_external_resource_the_byte_scans_cannot_see_is_refused_unread(
    doc: str, canary: tuple[Path, str]
) -> None:
    # In UTF-7 the DOCTYPE reaches libxml2, which fetches an external DTD or parameter
    # entity even with load_dtd off; the canary is not a DTD, so reading it would be a
    # `malformed` error naming it instead of `doctype`.
    path, secret = canary
    error = rejected(utf7(doc.format(uri=path.as_uri())))
    assert error.reason == "doctype"
    assert secret not in str(error)
    assert path.name not in str(error)


def test_external_dtd_over_the_network_is_rejected_as_doctype() -> None:
    doc = '<!DOCTYPE x SYSTEM "http://127.0.0.1:9/x.dtd"><x/>'
    assert rejected(doc.encode()).reason == "doctype"


def test_external_dtd_over_the_network_in_utf16_is_rejected_as_doctype() -> None:
    data = '<!DOCTYPE x SYSTEM "http://127.0.0.1:9/x.dtd"><x/>'.encode("utf-16")
    assert b"<!DOCTYPE" not in data  # the plain byte scan cannot see it
    assert rejected(data).reason == "doctype"
    bare = (
        '<?xml version="1.0" encoding="UTF-16"?><!DOCTYPE x SYSTEM "http://127.0.0.1:9/x.dtd"><x/>'
    )
    assert rejected(bare.encode("utf-16-le")).reason == "doctype"  # no byte order mark


def test_external_dtd_the_byte_scans_cannot_see_opens_no_connection() -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        listener.setblocking(False)
        port = listener.getsockname()[1]
        error = rejected(utf7(f'<!DOCTYPE x SYSTEM "http://127.0.0.1:{port}/x.dtd"><x/>'))
        assert error.reason == "doctype"
        with pytest.raises(BlockingIOError):
            listener.accept()  # nobody knocked


def test_doctype_error_gives_the_line_of_the_doctype() -> None:
    error = rejected(b'<?xml version="1.0"?>\n\n<!DOCTYPE m>\n<m/>')
    assert (error.reason, error.line) == ("doctype", 3)


# -- size, depth and element caps ----------------------------------------------------------


def test_depth_10000_is_rejected_as_too_deep() -> None:
    assert rejected(b"<a>" * 10_000 + b"</a>" * 10_000).reason == "too_deep"


def test_depth_over_max_depth_is_rejected_with_the_line_of_the_first_too_deep_element() -> None:
    error = rejected(b"<a>\n" * 65 + b"</a>" * 65)
    assert (error.reason, error.line) == ("too_deep", 65)
    parse_guarded(b"<a>\n" * 64 + b"</a>" * 64)  # exactly max_depth is fine


def test_depth_cap_follows_the_limits_and_holds_in_any_encoding() -> None:
    doc = "<a>" * 11 + "</a>" * 11
    limits = ParseLimits(max_depth=10)
    for data in (doc.encode(), doc.encode("utf-16"), utf7(doc)):
        assert rejected(data, limits).reason == "too_deep"
    parse_guarded("<a>" * 10 + "</a>" * 10, limits)


def test_depth_cap_is_not_fooled_by_end_tags_inside_cdata_or_comments() -> None:
    doc = b"<a>" * 11 + b"<![CDATA[" + b"</x>" * 50 + b"]]><!--" + b"</x>" * 50 + b"-->"
    assert rejected(doc + b"</a>" * 11, ParseLimits(max_depth=10)).reason == "too_deep"


def test_100000_siblings_are_rejected_as_too_large_at_the_default_cap() -> None:
    assert rejected(b"<r>" + b"<a/>" * 100_000 + b"</r>").reason == "too_large"


def test_100000_siblings_are_rejected_as_too_many_elements_with_max_bytes_raised() -> None:
    limits = ParseLimits(max_bytes=1 << 20)
    assert rejected(b"<r>" + b"<a/>" * 100_000 + b"</r>", limits).reason == "too_many_elements"


def test_element_cap_counts_the_root_and_holds_in_any_encoding() -> None:
    limits = ParseLimits(max_bytes=1 << 20, max_elements=100)
    parse_guarded(b"<r>" + b"<a/>" * 99 + b"</r>", limits)
    doc = "<r>" + "<a/>" * 100 + "</r>"
    for data in (doc.encode(), doc.encode("utf-16"), utf7(doc)):
        assert rejected(data, limits).reason == "too_many_elements"


def test_20_mb_text_node_is_rejected_as_too_large() -> None:
    assert rejected(b"<m>" + b"x" * 20_000_000 + b"</m>").reason == "too_large"


def test_20_mb_text_node_is_rejected_by_libxml2_when_max_bytes_allows_it() -> None:
    limits = ParseLimits(max_bytes=30_000_000)
    assert rejected(b"<m>" + b"x" * 20_000_000 + b"</m>", limits).reason == "too_large"


def test_size_cap_counts_the_utf8_bytes_of_a_str() -> None:
    text = "<m>" + "é" * (DEFAULT_MAX_BYTES // 2) + "</m>"  # fewer characters than the cap
    assert len(text) < DEFAULT_MAX_BYTES
    assert rejected(text).reason == "too_large"


def test_the_default_size_cap_is_the_organisms_max_message_bytes_default() -> None:
    """One default, written in the settings: the parser's cap when none is given is the one an
    organism applies when organism.yaml says nothing."""
    assert ParseLimits().max_bytes == DEFAULT_MAX_BYTES == OrganismSettings().max_message_bytes
    source = Path(parsing.__file__).read_text(encoding="utf-8")
    assert "262144" not in source and "256 * 1024" not in source


# -- broken input ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "line"),
    [
        (b"<m>\n<a>\n<b>x</b>", 3),
        (b"<m>\n<a>x</a>\n</m", 3),
        (b"<m>\n  <a>x</a", 2),
        (b'<m a="1', 1),
        (b"<m><a></b></m>", 1),
    ],
)
def test_truncated_or_mismatched_document_is_malformed_with_its_line(
    data: bytes, line: int
) -> None:
    error = rejected(data)
    assert (error.reason, error.line) == ("malformed", line)


@pytest.mark.parametrize(
    "data",
    [b"", b"   \n", bytes(range(256)) * 4, b"\x00\x01\x02", b"hello", b"<m/><n/>", b"\xff\xfe\x00"],
    ids=["empty", "blank", "binary", "control bytes", "text", "two roots", "broken bom"],
)
def test_junk_is_rejected_as_malformed(data: bytes) -> None:
    error = rejected(data)
    assert error.reason == "malformed"
    assert isinstance(error, ValueError)
    assert isinstance(error, XmlPipelineError)


def test_str_with_a_lone_surrogate_is_malformed_with_its_line() -> None:
    error = rejected("<m>\n\ud800</m>")
    assert (error.reason, error.line) == ("malformed", 2)


def test_undefined_entity_is_malformed() -> None:
    assert rejected(b"<m>&nope;</m>").reason == "malformed"


# -- what gets through -----------------------------------------------------------------------


def test_comments_and_processing_instructions_are_dropped() -> None:
    root = parse_guarded(b"<?pi a?><m><!-- c --><a>x<!-- c -->y</a><?pi b?></m>")
    assert [child.tag for child in root] == ["a"]
    assert root[0].text == "xy"


def test_declared_encoding_and_str_input_are_decoded() -> None:
    latin = '<?xml version="1.0" encoding="ISO-8859-1"?><m>café</m>'.encode("latin-1")
    assert parse_guarded(latin).text == "café"
    assert parse_guarded("<m>café 😀</m>").text == "café 😀"
    assert parse_guarded("<m>x</m>".encode("utf-16")).text == "x"


def test_str_input_is_read_as_the_text_it_is_whatever_its_declaration_says() -> None:
    for encoding in ("ISO-8859-1", "UTF-16", "utf-8"):
        text = f"<?xml version='1.0' encoding='{encoding}'?><m>café 😀</m>"
        assert parse_guarded(text).text == "café 😀"


def test_predefined_and_character_references_are_expanded() -> None:
    root = parse_guarded(b"<m>&lt;&amp;&gt;&#13;&#x1F600;</m>")
    assert root.text == "<&>\r😀"


def test_the_word_doctype_in_text_is_not_a_doctype() -> None:
    assert parse_guarded(b"<m>DOCTYPE &lt;!DOCTYPE x&gt;</m>").text == "DOCTYPE <!DOCTYPE x>"


def test_parsing_returns_an_lxml_element() -> None:
    root = parse_guarded(b"<m><a/></m>")
    assert isinstance(root, etree._Element)
    assert root.tag == "m"
