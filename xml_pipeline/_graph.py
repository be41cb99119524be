"""The picture of an organism: its listeners, who may call whom, and what it runs on.

`OrganismGraph.from_config` reads an `OrganismConfig` (what `load_config` returns), never the
handlers, so an organism can be drawn without importing its code (on a machine without its
dependencies, or before they are written). One graph, three texts:

- `OrganismGraph.mermaid`: a ``flowchart LR`` that GitHub, GitLab and most Markdown viewers
  render in a fenced ``mermaid`` block;
- `OrganismGraph.dot`: Graphviz DOT;
- `render_svg`: that DOT drawn by Graphviz's ``dot`` program, when it is installed.

What is drawn: one node per listener (its name, its payload class, and the words
``cpu_bound``, ``handles_errors``, ``retry``, ``circuit``, ``compensate`` when they apply), an
arrow per peer (``a --> b``: a may call b; answers go back along the chain and are not drawn),
one dashed arrow from the outside into the organism (``send``, ``inject`` and ``organism run``
may address any listener), and the backend and the process pool beside it. A Redis URL is
shown without its user, password and query.

Listener names may hold any character but whitespace (dots, non-ASCII letters, quotes, ``<``):
node ids are made from them (`_node_ids`) and every label is escaped for its format.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from collections.abc import Iterable
from dataclasses import dataclass
from urllib.parse import urlsplit

from xml_pipeline._config import ListenerConfig, OrganismConfig
from xml_pipeline._errors import UsageError
from xml_pipeline._settings import BackendConfig

__all__ = ["GraphNode", "OrganismGraph", "render_svg"]

# marks, in the order they are shown; these two also style the node (both may, at once)
_CPU_BOUND, _HANDLES_ERRORS = "cpu_bound", "handles_errors"
_STYLES = {  # (Mermaid classDef, DOT attributes): outlines only, readable on dark themes too
    _CPU_BOUND: ("stroke:#d35400,stroke-width:3px", 'color="#d35400", penwidth=2.5'),
    _HANDLES_ERRORS: ("stroke-dasharray:6 3", 'style="rounded,dashed"'),
}
_OUTSIDE, _ORGANISM, _RUNS_ON, _BACKEND, _POOL = (
    "_outside", "_organism", "_runs_on", "_backend", "_pool",
)  # fmt: skip
# ids Mermaid reads as keywords (and DOT's, which are quoted anyway): never a node id
_KEYWORDS = frozenset({
    "end", "graph", "flowchart", "subgraph", "style", "class", "classdef", "click", "linkstyle",
    "direction", "call", "href", "default", "node", "edge", "digraph", "strict",
})  # fmt: skip
_TIMEOUT_SECONDS = 60  # for `dot`: a few listeners take milliseconds; this only stops a hang


@dataclass(frozen=True, slots=True)
class GraphNode:
    """One listener as drawn.

    Attributes:
        id: its node id in both texts: the name when that is a plain identifier, otherwise
            made from it (`_node_ids`); unique within the graph.
        name: the listener's name, as written.
        payload: the class name of its payload (the last part of ``payload_class``).
        marks: what is special about it, in words (``cpu_bound``, ``handles_errors``,
            ``retry 3 tries``, ``circuit 5 failures``, ``compensate``), in that order.
    """

    id: str
    name: str
    payload: str
    marks: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class OrganismGraph:
    """The topology of one organism, ready to print as Mermaid or DOT.

    Attributes:
        name: the organism's name.
        nodes: one per listener, in the file's order.
        edges: ``(caller id, callee id)`` pairs, one per peer, in the file's order.
        backend: where shared state lives, in words (``memory``, ``redis 127.0.0.1:6379/0``).
        pool: the process pool in words (``4 workers``), or None when no listener is
            ``cpu_bound`` (then no pool is started).
    """

    name: str
    nodes: tuple[GraphNode, ...]
    edges: tuple[tuple[str, str], ...]
    backend: str
    pool: str | None

    @classmethod
    def from_config(cls, config: OrganismConfig) -> OrganismGraph:
        """The graph of a validated organism file; nothing it names is imported."""
        ids = _node_ids(listener.name for listener in config.listeners)
        nodes = tuple(_node(listener, ids[listener.name]) for listener in config.listeners)
        edges = tuple(
            (ids[listener.name], ids[peer])
            for listener in config.listeners
            for peer in listener.peers
        )
        pool = None
        if any(listener.cpu_bound for listener in config.listeners):
            workers = config.process_pool.workers
            pool = f"{workers} worker{'s' if workers != 1 else ''}"
        return cls(config.name, nodes, edges, _backend(config.backend), pool)

    def mermaid(self) -> str:
        """The graph as a Mermaid ``flowchart LR``, ending with a newline."""
        lines = ["flowchart LR"]
        lines.append(f'    {_OUTSIDE}(["{_mermaid_text("outside: send, inject, organism run")}"])')
        lines.append(f'    subgraph {_ORGANISM}["{_mermaid_text(f"organism {self.name}")}"]')
        for node in self.nodes:
            label = "<br/>".join(
                [_mermaid_text(node.name), f"<i>{_mermaid_text(node.payload)}</i>"]
                + ([_mermaid_text(" · ".join(node.marks))] if node.marks else [])
            )
            lines.append(f'        {node.id}["{label}"]')
        lines.append("    end")
        lines.append(f"    {_OUTSIDE} -. any listener .-> {_ORGANISM}")
        lines.extend(f"    {caller} --> {callee}" for caller, callee in self.edges)
        lines.append(f'    subgraph {_RUNS_ON}["runs on"]')
        lines.append(f'        {_BACKEND}[("{_mermaid_text(f"backend: {self.backend}")}")]')
        if self.pool is not None:
            lines.append(f'        {_POOL}[["{_mermaid_text(f"process pool: {self.pool}")}"]]')
        lines.append("    end")
        for mark, (mermaid_style, _) in _STYLES.items():
            marked = [node.id for node in self.nodes if mark in node.marks]
            if marked:
                lines.append(f"    classDef {mark} {mermaid_style}")
                lines.append(f"    class {','.join(marked)} {mark}")
        return "\n".join(lines) + "\n"

    def dot(self) -> str:
        """The graph as Graphviz DOT (a ``digraph``), ending with a newline."""
        font = 'fontname="Helvetica"'
        lines = [
            f"digraph {_dot_string(self.name)} {{",
            f"    graph [rankdir=LR, compound=true, {font}];",
            f'    node [shape=box, style="rounded", {font}];',
            f"    edge [{font}, fontsize=10];",
            f'    "{_OUTSIDE}" [label=<outside<BR/><FONT POINT-SIZE="10">send, inject, '
            f"organism run</FONT>>, shape=oval, style=dashed];",
            f'    subgraph "cluster{_ORGANISM}" {{',
            f"        label=<organism <B>{_html(self.name)}</B>>;",
        ]
        for node in self.nodes:
            label = f"{_html(node.name)}<BR/><I>{_html(node.payload)}</I>"
            if node.marks:
                label += f'<BR/><FONT POINT-SIZE="10">{_html(" · ".join(node.marks))}</FONT>'
            attributes = [f"label=<{label}>"]
            attributes += [_STYLES[mark][1] for mark in _STYLES if mark in node.marks]
            lines.append(f'        "{node.id}" [{", ".join(attributes)}];')
        lines.append("    }")
        if self.nodes:  # an edge into a cluster is drawn to one of its nodes, clipped at the box
            first = self.nodes[0].id
            lines.append(
                f'    "{_OUTSIDE}" -> "{first}" [lhead="cluster{_ORGANISM}", style=dashed, '
                'label="any listener"];'
            )
        lines.extend(f'    "{caller}" -> "{callee}";' for caller, callee in self.edges)
        lines.append(f'    subgraph "cluster{_RUNS_ON}" {{')
        lines.append('        label="runs on"; style=dotted;')
        backend = _html(f"backend: {self.backend}")
        lines.append(f'        "{_BACKEND}" [label=<{backend}>, shape=cylinder, style=""];')
        if self.pool is not None:
            pool = _html(f"process pool: {self.pool}")
            lines.append(f'        "{_POOL}" [label=<{pool}>, shape=box3d, style=""];')
        lines.append("    }")
        lines.append("}")
        return "\n".join(lines) + "\n"


def render_svg(dot: str) -> str:
    """Draw DOT text (`OrganismGraph.dot`) as SVG with Graphviz's ``dot`` program.

    Raises:
        UsageError: ``dot`` is not on PATH (the message says how to install Graphviz), or it
            rejected the text or failed (the message holds what it printed).
    """
    program = shutil.which("dot")
    if program is None:
        raise UsageError(
            "drawing SVG needs Graphviz's 'dot' program, which is not on PATH; install "
            "Graphviz (apt-get install graphviz, brew install graphviz, or graphviz.org) or "
            "print Mermaid or DOT text instead"
        )
    try:
        done = subprocess.run(
            [program, "-Tsvg"],
            input=dot,
            capture_output=True,
            text=True,
            encoding="utf-8",
            timeout=_TIMEOUT_SECONDS,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise UsageError(f"Graphviz's {program} could not draw the graph: {exc}") from None
    if done.returncode != 0:
        said = done.stderr.strip() or "nothing"
        raise UsageError(f"Graphviz's {program} exited {done.returncode} and said: {said}")
    return done.stdout


# -- what a node says -------------------------------------------------------------------------


def _node(listener: ListenerConfig, node_id: str) -> GraphNode:
    marks = [mark for mark in (_CPU_BOUND, _HANDLES_ERRORS) if getattr(listener, mark)]
    if listener.retry is not None:
        attempts = listener.retry.attempts
        marks.append(f"retry {attempts} tr{'ies' if attempts != 1 else 'y'}")
    if listener.circuit is not None:
        failures = listener.circuit.failures
        marks.append(f"circuit {failures} failure{'s' if failures != 1 else ''}")
    if listener.compensate is not None:
        marks.append("compensate")
    payload = listener.payload_class.rpartition(".")[2]
    return GraphNode(node_id, listener.name, payload, tuple(marks))


def _node_ids(names: Iterable[str]) -> dict[str, str]:
    """A node id per listener name: the name itself when it is a plain ASCII identifier,
    otherwise its letters and digits joined by ``_`` (``billing.invoice`` ->
    ``billing_invoice``), prefixed with ``l_`` where it would not start with a letter and
    numbered where it would repeat another id or be a keyword of either format."""
    taken = {_OUTSIDE, _ORGANISM, _RUNS_ON, _BACKEND, _POOL}
    ids: dict[str, str] = {}
    for name in names:
        base = re.sub(r"[^A-Za-z0-9]+", "_", name)
        if not base[:1].isalpha():
            base = "l_" + base.lstrip("_")
        candidate, n = base, 1
        while candidate in taken or candidate.lower() in _KEYWORDS:
            n += 1
            candidate = f"{base}_{n}"
        taken.add(candidate)
        ids[name] = candidate
    return ids


def _backend(backend: BackendConfig) -> str:
    if backend.type == "redis":
        return f"redis {_redis_place(backend.redis_url)}"
    if backend.type == "manager":
        return f"manager {backend.manager_address or '(its own server)'}"
    return "memory"


def _redis_place(url: str) -> str:
    """Host, port and database of a Redis URL (a socket's path), never its credentials."""
    parts = urlsplit(url)
    if parts.scheme == "unix":
        return parts.path
    host = parts.hostname or "localhost"
    if ":" in host:
        host = f"[{host}]"
    try:
        port = parts.port or 6379
    except ValueError:  # validated by the config reader; a code-made config may not be
        port = 6379
    database = parts.path.strip("/") or "0"
    return f"{host}:{port}/{database}"


# -- escaping ---------------------------------------------------------------------------------

_MERMAID_ENTITIES = {
    '"': "#quot;", "<": "#lt;", ">": "#gt;", "&": "#amp;", "#": "#35;", "`": "#96;",
}  # fmt: skip
_HTML_ENTITIES = {"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;"}


def _mermaid_text(text: str) -> str:
    """Text for a Mermaid ``"..."`` label: quotes, markup and entity starts as entity codes
    (``#quot;``), so a name cannot end the label, open a tag or spell an entity; line breaks
    as spaces (a label is one line of the text)."""
    return "".join(_MERMAID_ENTITIES.get(c, c) for c in " ".join(text.split()))


def _html(text: str) -> str:
    """Text for a Graphviz HTML-like label (``<...>``), line breaks as spaces."""
    return "".join(_HTML_ENTITIES.get(c, c) for c in " ".join(text.split()))


def _dot_string(text: str) -> str:
    """A DOT double-quoted string (the graph's name). DOT's lexer reads ``\\"`` as a quote
    and keeps ``\\\\`` as two backslashes: doubling them is the only way a name ending in
    one cannot swallow the closing quote."""
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'
