"""`organism graph`: an organism file drawn as Mermaid, DOT and SVG (`xml_pipeline._graph`).

Mermaid text is read back by a parser of the forms the graph writes (every line must be one of
them); DOT is read back by Graphviz itself: the SVG it draws must show each listener's name,
word for word, and one arrow per peer. Graphviz is needed (``graphviz`` marker; CI's
``.ci/run`` installs it) and missing it fails those tests rather than skipping them.
"""

from __future__ import annotations

import html
import re
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from xml_pipeline._config import load_config, parse_config
from xml_pipeline._errors import UsageError
from xml_pipeline._graph import OrganismGraph, render_svg

ROOT = Path(__file__).resolve().parents[1]
HELLO = ROOT / "organisms" / "hello" / "organism.yaml"
HASHER = ROOT / "organisms" / "hasher" / "organism.yaml"

# names that break a naive writer: quotes, markup, an entity, Mermaid's `end` keyword, its
# entity syntax, markdown backticks, non-ASCII letters, a trailing backslash, a leading digit
HOSTILE = r"""
organism:
  name: 'evil "org" <b>&amp;</b>'
listeners:
  - name: 'a"b<c>&d'
    payload_class: handlers.Greeting
    handler: handlers.greet
    peers: ['end', 'résumé.über', 'x#quot;y', 'o`**z**`\']
    cpu_bound: true
    handles_errors: true
    retry: {attempts: 4}
    circuit: {failures: 1}
    compensate: handlers.undo
  - name: end
    payload_class: handlers.Greeting
    handler: handlers.greet
    peers: [end_2]
  - name: end_2
    payload_class: x.y.Shout
    handler: handlers.greet
  - name: 'résumé.über'
    payload_class: handlers.Greeting
    handler: handlers.greet
    handles_errors: true
  - name: 'x#quot;y'
    payload_class: handlers.Greeting
    handler: handlers.greet
  - name: 'o`**z**`\'
    payload_class: handlers.Greeting
    handler: handlers.greet
    peers: ['9']
  - name: '9'
    payload_class: handlers.Greeting
    handler: handlers.greet
    peers: [l_9]
  - name: l_9
    payload_class: handlers.Greeting
    handler: handlers.greet
backend:
  type: redis
  redis_url: 'redis://alice:s3cret@db.example:6380/2?socket_timeout=5'
process_pool:
  workers: 3
"""
HOSTILE_NAMES = ['a"b<c>&d', "end", "end_2", "résumé.über", "x#quot;y", "o`**z**`\\", "9", "l_9"]
HOSTILE_PEERS = {
    ('a"b<c>&d', "end"),
    ('a"b<c>&d', "résumé.über"),
    ('a"b<c>&d', "x#quot;y"),
    ('a"b<c>&d', "o`**z**`\\"),
    ("end", "end_2"),
    ("o`**z**`\\", "9"),
    ("9", "l_9"),
}


def hostile() -> OrganismGraph:
    return OrganismGraph.from_config(parse_config(HOSTILE, file="hostile.yaml"))


def organism(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "xml_pipeline", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env=env,
    )


# -- Mermaid, read back -------------------------------------------------------------------------

_SHAPES = r'(\(\[|\[\(|\[\[|\[)"([^"]*)"(\]\)|\)\]|\]\]|\])'
_LINE_FORMS = {
    "node": re.compile(rf"^ +(\w+){_SHAPES}$"),
    "edge": re.compile(r"^ +(\w+) --> (\w+)$"),
    "entry": re.compile(r"^ +(\w+) -\. any listener \.-> (\w+)$"),
    "subgraph": re.compile(rf"^ +subgraph (\w+){_SHAPES}$"),
    "end": re.compile(r"^ +end$"),
    "classDef": re.compile(r"^ +classDef (\w+) [\w:#;,. -]+$"),
    "class": re.compile(r"^ +class ([\w,]+) (\w+)$"),
}


class Mermaid:
    """A flowchart written by `OrganismGraph.mermaid`, read back line by line."""

    def __init__(self, text: str) -> None:
        lines = text.splitlines()
        assert lines[0] == "flowchart LR", lines[0]
        self.labels: dict[str, str] = {}  # node or subgraph id -> label, entities decoded
        self.edges: list[tuple[str, str]] = []
        self.entries: list[tuple[str, str]] = []
        self.classes: dict[str, set[str]] = {}
        self.subgraphs: list[str] = []
        depth = 0
        for line in lines[1:]:
            form, match = next(
                ((form, m) for form, pattern in _LINE_FORMS.items() if (m := pattern.match(line))),
                (None, None),
            )
            assert form is not None and match is not None, f"not a line the graph writes: {line!r}"
            if form in ("node", "subgraph"):
                node_id, label = match[1], match[3]
                assert node_id not in self.labels, f"id {node_id} given twice"
                self.labels[node_id] = label
            if form == "subgraph":
                self.subgraphs.append(match[1])
                depth += 1
            elif form == "end":
                depth -= 1
            elif form == "edge":
                self.edges.append((match[1], match[2]))
            elif form == "entry":
                self.entries.append((match[1], match[2]))
            elif form == "class":
                for node_id in match[1].split(","):
                    self.classes.setdefault(node_id, set()).add(match[2])
        assert depth == 0, "every subgraph is closed"
        for a, b in [*self.edges, *self.entries]:
            assert a in self.labels and b in self.labels, f"{a} -> {b}: an edge to no node"

    def lines_of(self, node_id: str) -> list[str]:
        """A label's lines as Mermaid shows them: entity codes decoded, tags removed."""
        return [_shown(part) for part in self.labels[node_id].split("<br/>")]

    def id_of(self, name: str) -> str:
        found = [node_id for node_id in self.labels if self.lines_of(node_id)[0] == name]
        assert len(found) == 1, f"{name!r} labels {found}"
        return found[0]


def _shown(label: str) -> str:
    """What Mermaid shows for label text: ``#quot;`` and ``#35;`` are its entity codes, read
    in one pass (``#35;quot;`` shows ``#quot;``)."""
    assert not re.search(r"<(?!/?i>)", label), f"markup other than <i> in {label!r}"
    text = re.sub(r"</?i>", "", label)
    assert "&" not in text, f"a raw & in {label!r}: the browser would read it as an entity"

    def decode(code: re.Match[str]) -> str:
        return html.unescape(f"&#{code[1]};" if code[1].isdigit() else f"&{code[1]};")

    return re.sub(r"#(\w+);", decode, text)


def test_mermaid_of_hello_has_every_listener_its_payload_and_each_peer_as_an_arrow() -> None:
    graph = Mermaid(OrganismGraph.from_config(load_config(HELLO)).mermaid())
    assert graph.lines_of(graph.id_of("greeter")) == ["greeter", "Greeting"]
    assert graph.lines_of(graph.id_of("shouter")) == ["shouter", "Shout"]
    assert graph.edges == [(graph.id_of("greeter"), graph.id_of("shouter"))]
    assert graph.entries == [("_outside", "_organism")], "one arrow from outside, into the box"
    assert _shown(graph.labels["_organism"]) == "organism hello"
    assert _shown(graph.labels["_backend"]) == "backend: memory"
    assert "_pool" not in graph.labels, "no listener is cpu_bound: no pool is started"


def test_hostile_names_come_back_word_for_word_from_mermaid_and_ids_are_plain() -> None:
    graph = Mermaid(hostile().mermaid())
    ids = {name: graph.id_of(name) for name in HOSTILE_NAMES}
    assert len(set(ids.values())) == len(ids)
    for node_id in ids.values():
        assert re.fullmatch(r"[A-Za-z][A-Za-z0-9_]*", node_id), node_id
        assert node_id.lower() not in ("end", "graph", "subgraph", "class", "style"), node_id
    assert set(graph.edges) == {(ids[a], ids[b]) for a, b in HOSTILE_PEERS}
    assert _shown(graph.labels["_organism"]) == 'organism evil "org" <b>&amp;</b>'
    assert graph.lines_of(ids["end_2"])[1] == "Shout", "the class name, not its module path"


def test_marks_are_written_on_the_node_and_style_it() -> None:
    graph = Mermaid(hostile().mermaid())
    marked = graph.id_of('a"b<c>&d')
    marks = "cpu_bound · handles_errors · retry 4 tries · circuit 1 failure · compensate"
    assert graph.lines_of(marked) == ['a"b<c>&d', "Greeting", marks]
    assert graph.classes[marked] == {"cpu_bound", "handles_errors"}
    assert graph.classes[graph.id_of("résumé.über")] == {"handles_errors"}
    assert graph.id_of("end") not in graph.classes
    assert graph.lines_of(graph.id_of("end")) == ["end", "Greeting"], "no marks, no third line"


def test_the_backend_is_shown_without_credentials_and_the_pool_with_its_workers() -> None:
    graph = hostile()
    assert graph.backend == "redis db.example:6380/2"
    assert graph.pool == "3 workers"
    for text in (graph.mermaid(), graph.dot()):
        assert "s3cret" not in text and "alice" not in text and "socket_timeout" not in text
        assert "process pool: 3 workers" in text


@pytest.mark.parametrize(
    ("backend", "shown"),
    [
        ("{type: redis, redis_url: 'unix:///run/redis.sock?db=1'}", "redis /run/redis.sock"),
        ("{type: redis, redis_url: 'rediss://:pw@[::1]/3'}", "redis [::1]:6379/3"),
        ("{type: manager}", "manager (its own server)"),
        ("{type: manager, manager_address: '10.0.0.2:5000', manager_authkey: k}",
         "manager 10.0.0.2:5000"),
    ],
)  # fmt: skip
def test_every_backend_type_is_named_with_where_it_is(backend: str, shown: str) -> None:
    text = HOSTILE.split("backend:")[0] + f"backend: {backend}\n"
    assert OrganismGraph.from_config(parse_config(text, file="b.yaml")).backend == shown


# -- DOT, read back by Graphviz -----------------------------------------------------------------

_SVG = "{http://www.w3.org/2000/svg}"


def _need_graphviz() -> None:
    if shutil.which("dot") is None:  # never skip: CI installs it
        pytest.fail("Graphviz's dot is not on PATH: apt-get install graphviz", pytrace=False)


def drawn(svg: str) -> tuple[dict[str, list[str]], set[tuple[str, str]]]:
    """The nodes Graphviz drew (id -> the lines of text shown) and its arrows (id pairs)."""
    root = ET.fromstring(svg)
    nodes: dict[str, list[str]] = {}
    edges: set[tuple[str, str]] = set()
    for group in root.iter(f"{_SVG}g"):
        title = group.findtext(f"{_SVG}title") or ""
        if group.get("class") == "node":
            nodes[title] = [t.text or "" for t in group.iter(f"{_SVG}text")]
        elif group.get("class") == "edge":
            a, _, b = title.partition("->")
            edges.add((a, b))
    return nodes, edges


@pytest.mark.graphviz
def test_dot_of_hostile_names_is_drawn_by_graphviz_with_every_name_word_for_word() -> None:
    _need_graphviz()
    graph = hostile()
    nodes, edges = drawn(render_svg(graph.dot()))
    ids = {node.name: node.id for node in graph.nodes}
    assert set(ids) == set(HOSTILE_NAMES)
    for name, node_id in ids.items():
        assert nodes[node_id][0] == name
    assert nodes[ids['a"b<c>&d']][1:] == [
        "Greeting",
        "cpu_bound · handles_errors · retry 4 tries · circuit 1 failure · compensate",
    ]
    first = graph.nodes[0].id  # the arrow into the organism's box is drawn to one of its nodes
    assert edges == {(ids[a], ids[b]) for a, b in HOSTILE_PEERS} | {("_outside", first)}
    assert nodes["_backend"] == ["backend: redis db.example:6380/2"]
    assert nodes["_pool"] == ["process pool: 3 workers"]
    svg = render_svg(graph.dot())
    assert 'evil "org" <b>&amp;</b>' in "".join(ET.fromstring(svg).itertext())


@pytest.mark.graphviz
def test_graphviz_checks_the_dot_of_every_organism_in_the_repository() -> None:
    _need_graphviz()
    for file in sorted(ROOT.glob("organisms/*/organism.yaml")):
        dot = OrganismGraph.from_config(load_config(file)).dot()
        done = subprocess.run(
            ["dot", "-Tcanon"], input=dot, capture_output=True, text=True, timeout=60, check=False
        )
        assert done.returncode == 0 and done.stderr == "", f"{file}: {done.stderr}"


def test_render_svg_without_graphviz_says_how_to_install_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # a PATH with no dot on it
    advice = r"not on PATH; install Graphviz \(apt-get install graphviz"
    with pytest.raises(UsageError, match=advice):
        render_svg(hostile().dot())


@pytest.mark.graphviz
def test_render_svg_reports_what_graphviz_said_about_text_it_rejects() -> None:
    _need_graphviz()
    with pytest.raises(UsageError, match=r"exited 1 and said: .*syntax error"):
        render_svg("digraph { a -> }")


# -- the command --------------------------------------------------------------------------------


def test_the_command_prints_the_hello_graph_as_mermaid() -> None:
    done = organism("graph", str(HELLO))
    assert done.returncode == 0, done.stderr
    assert done.stdout == OrganismGraph.from_config(load_config(HELLO)).mermaid()
    assert "greeter --> shouter" in done.stdout


def test_the_command_prints_dot_and_writes_to_a_file(tmp_path: Path) -> None:
    done = organism("graph", str(HASHER), "--format", "dot")
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith('digraph "hasher" {') and '"desk" -> "hasher";' in done.stdout
    out = tmp_path / "hasher.gv"  # the format follows the suffix when not given
    done = organism("graph", str(HASHER), "-o", str(out))
    assert done.returncode == 0 and done.stdout == "", done.stderr
    assert out.read_text(encoding="utf-8") == OrganismGraph.from_config(load_config(HASHER)).dot()


@pytest.mark.graphviz
def test_the_command_draws_svg_with_graphviz(tmp_path: Path) -> None:
    _need_graphviz()
    out = tmp_path / "hello.svg"
    done = organism("graph", str(HELLO), "-o", str(out))
    assert done.returncode == 0, done.stderr
    nodes, edges = drawn(out.read_text(encoding="utf-8"))
    assert nodes["greeter"] == ["greeter", "Greeting"] and ("greeter", "shouter") in edges


def test_the_command_asks_for_graphviz_when_svg_is_wanted_without_it(tmp_path: Path) -> None:
    done = organism("graph", str(HELLO), "--format", "svg", env={"PATH": str(tmp_path)})
    assert done.returncode == 1 and done.stdout == ""
    assert "not on PATH; install Graphviz (apt-get install graphviz" in done.stderr
    assert "--format mermaid or --format dot" in done.stderr


def test_the_command_draws_an_organism_whose_code_does_not_import(tmp_path: Path) -> None:
    """The graph comes from the file alone: handler modules that are missing do not matter."""
    file = tmp_path / "organism.yaml"
    file.write_text(HOSTILE, encoding="utf-8")
    done = organism("graph", str(file))
    assert done.returncode == 0, done.stderr
    assert Mermaid(done.stdout).id_of("résumé.über")


def test_the_command_reports_a_bad_file_with_its_key_path_and_line(tmp_path: Path) -> None:
    bad = tmp_path / "organism.yaml"
    bad.write_text(
        "organism:\n  name: broken\nlisteners:\n  - name: a\n    payload_class: m.A\n"
        "    handler: m.run\n    peers: [b]\n"
    )
    done = organism("graph", str(bad))
    assert done.returncode == 2 and done.stdout == ""
    assert f"{bad}:7: listeners[0].peers[0]" in done.stderr


def test_the_command_reports_a_missing_file() -> None:
    done = organism("graph", "no/such/organism.yaml")
    assert done.returncode == 2
    assert "no/such/organism.yaml: (document): cannot read the organism file" in done.stderr
