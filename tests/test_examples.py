"""Every example in ``examples/`` runs as its README says, and shows what it claims.

An example is a folder of ``examples/`` with ``organism.yaml``, ``handlers.py``, ``README.md``
and what runs it: ``main.py``, or tests of its own (``test_*.py``, run by pytest), listed in
``examples/README.md``. Its README is run as written, from a copy of the repository
(`tests.doc_blocks`): the commands of its ``console`` blocks run in real subprocesses and must
print what the blocks show; a ``python`` or ``yaml`` block is an excerpt of one of the
example's own files, word for word. Each example then has a test here named after it, which
checks the claims behind what its commands printed.

The Redis example gets the test's private redis-server in ``REDIS_URL``; the web example is
served by a real uvicorn on a port the system picks (`tests.uvicorn_server`) and called with
httpx. No example uses a fixed port of its own.
"""

from __future__ import annotations

import re
import signal
import sys
import tomllib
from collections.abc import AsyncIterator
from decimal import Decimal
from pathlib import Path

import anyio
import httpx
import pytest
from lxml import etree

from tests.doc_blocks import (
    ROOT,
    Block,
    completed,
    console_steps,
    copy_repository,
    markdown_blocks,
    output_matches,
    run,
    run_shell,
    tool_env,
)
from tests.redis_server import RedisServer, redis_server, redis_url  # noqa: F401 - fixtures
from tests.uvicorn_server import Uvicorn, serve

EXAMPLES = ROOT / "examples"
FILES = ("README.md", "organism.yaml", "handlers.py")  # and main.py or test_*.py


def example_names() -> list[str]:
    """The folders of ``examples/``."""
    return sorted(
        path.name
        for path in EXAMPLES.iterdir()
        if path.is_dir() and not path.name.startswith((".", "_"))
    )


def runs_as_main(name: str) -> bool:
    return (EXAMPLES / name / "main.py").is_file()


def sources(name: str) -> list[Path]:
    """The example's own files that a README may quote: its Python and YAML files."""
    folder = EXAMPLES / name
    return sorted([*folder.glob("*.py"), *folder.glob("*.yaml")])


def excerpts() -> list[object]:
    """The blocks of the examples' READMEs that are not transcripts, as pytest params."""
    return [
        pytest.param(block, id=f"{name}-line{block.line}")
        for name in example_names()
        for block in markdown_blocks(EXAMPLES / name / "README.md")
        if block.lang != "console"
    ]


@pytest.fixture(scope="module")
def repo_copy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the repository to run the examples in: nothing is written into the checkout."""
    return copy_repository(tmp_path_factory.mktemp("examples") / "repo")


def run_readme(name: str, repo_copy: Path, env: dict[str, str]) -> dict[str, str]:
    """Run every command of the example's README, checking each prints what the README shows.

    Returns:
        what each command printed (standard output and error, as on a terminal), by command.
    """
    printed: dict[str, str] = {}
    for block in markdown_blocks(EXAMPLES / name / "README.md"):
        if block.lang != "console":
            continue
        for step in console_steps(block):
            done = run_shell(step.command, repo_copy, env, one_stream=True)
            where = f"{block}: {step.command}"
            assert done.returncode == 0, completed(done, where)
            shown = "\n".join(step.expected)
            assert output_matches(step.expected, done.stdout), (
                f"{where} printed\n{done.stdout}\n--- which is not what the README shows:\n"
                f"{shown}\n--- make them the same ('...' stands for any text)"
            )
            printed[step.command] = done.stdout
    assert printed, f"examples/{name}/README.md shows no command in a console block"
    return printed


# -- the folder -----------------------------------------------------------------------------


def test_the_index_lists_every_example_and_each_has_its_files() -> None:
    index = (EXAMPLES / "README.md").read_text(encoding="utf-8")
    linked = re.findall(r"\]\(([\w.-]+)/\)", index)
    assert sorted(linked) == example_names(), "examples/README.md links each example once"
    assert not markdown_blocks(EXAMPLES / "README.md"), "the index runs nothing: no blocks"
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    for name in example_names():
        missing = [file for file in FILES if not (EXAMPLES / name / file).is_file()]
        assert not missing, f"examples/{name} lacks {missing}"
        tests = list((EXAMPLES / name).glob("test_*.py"))
        assert runs_as_main(name) or tests, f"examples/{name} has no main.py nor test_*.py"
        assert f"(examples/{name}/)" in readme, f"README.md's Examples section links {name}"


def test_every_example_has_a_test_here() -> None:
    """A new example cannot go untested: its README is run by a test named after it."""
    untested = [name for name in example_names() if f"test_{name}" not in globals()]
    assert not untested, f"add a test named test_<example> for {untested}"


@pytest.mark.parametrize("name", [name for name in example_names() if runs_as_main(name)])
def test_main_starts_under_the_main_guard(name: str) -> None:
    """Child processes import the main script again: starting nothing at import is a habit
    every example shows, whether or not it starts processes itself."""
    text = (EXAMPLES / name / "main.py").read_text(encoding="utf-8")
    assert '\nif __name__ == "__main__":\n' in text


@pytest.mark.parametrize("name", example_names())
def test_the_organism_file_validates(name: str, repo_copy: Path) -> None:
    done = run(["organism", "validate", f"examples/{name}/organism.yaml"], repo_copy, tool_env())
    assert done.returncode == 0, completed(done, f"organism validate examples/{name}")
    assert ": ok (" in done.stdout


@pytest.mark.parametrize("block", excerpts())
def test_a_readme_excerpt_is_in_the_examples_files(block: Block) -> None:
    assert block.lang in ("python", "yaml"), (
        f"{block}: an example's README shows commands in console blocks (run and checked) "
        "and excerpts of its files in python or yaml blocks; this test checks no other kind"
    )
    files = sources(Path(block.file).parent.name)
    texts = [file.read_text(encoding="utf-8") for file in files]
    assert any(block.text in text for text in texts), (
        f"{block} is not word for word in {', '.join(f.name for f in files)}: copy it from there"
    )


# -- each example, run --------------------------------------------------------------------


def test_fan_out_join(repo_copy: Path) -> None:
    printed = run_readme("fan_out_join", repo_copy, tool_env())
    main = printed["python examples/fan_out_join/main.py"]
    answers = re.findall(r"^  answer: (.*)$", main, re.MULTILINE)
    assert answers == [
        "6*7 = 42, and the city is Oslo",
        "6*7 = 42, and the city is unknown (the lookup failed with handler_error)",
        "sorry, no answer: the planner failed (handler_error)",
    ]
    for hops in re.findall(r"^  hops: (.*)$", main, re.MULTILINE):
        runs = [hop.split(" -> ")[1] for hop in hops.split(", ")]
        assert (runs.count("desk"), runs.count("planner")) == (2, 1), hops
    assert "'calculator' raised ZeroDivisionError" in main
    run_command = [c for c in printed if c.startswith("organism run examples/fan_out_join/")]
    assert run_command, "the README runs the example with the organism command too"


@pytest.mark.redis
def test_shared_state_redis(repo_copy: Path, request: pytest.FixtureRequest) -> None:
    server: RedisServer = request.getfixturevalue("redis_server")
    env = tool_env()
    env["REDIS_URL"] = request.getfixturevalue("redis_url")  # the private server, flushed
    printed = run_readme("shared_state_redis", repo_copy, env)
    main = printed["python examples/shared_state_redis/main.py"]
    started = re.search(r"^A: started conversation (\w+);", main, re.MULTILINE)
    read = re.search(r"^B: A's conversation (\w+), as Redis holds it:", main, re.MULTILINE)
    assert started and read and started[1] == read[1], "B read the conversation A started"
    assert "B: live records in Redis: 3 " in main
    assert "B: its own task came back 'ASKED BY B', done by B's own worker" in main
    assert "A: its task came back 'HELD BY A', done by A's own worker" in main
    with server.client() as client:  # both conversations ended: only the root is left
        assert client.zcard("xp-example:live") == 1
    failing = [c for c in printed if "--redis-url redis://127.0.0.1:1/0" in c]
    assert failing and "backend_unreachable" in printed[failing[0]]
    assert printed[failing[0]].rstrip().endswith("exit status 1")


def test_cpu_bound(repo_copy: Path) -> None:
    printed = run_readme("cpu_bound", repo_copy, tool_env())
    main = printed["python examples/cpu_bound/main.py"]
    inline = re.search(r"pings answered while it ran: (\d+)", main)
    pooled = re.search(r"pings answered while they ran: (\d+)", main)
    assert inline and pooled
    assert inline[1] == "0", "nothing else runs while a handler holds the event loop"
    assert int(pooled[1]) > 0, "the event loop stays free while the pool works"
    workers = re.search(r"ran in worker processes \[([\d, ]+)\]; this one is (\d+)", main)
    assert workers
    pids = {int(pid) for pid in workers[1].split(", ")}
    assert 1 <= len(pids) <= 2 and int(workers[2]) not in pids, main


# -- web_service: its README, then the app under a real uvicorn -----------------------------

UVICORN = ["uvicorn", "app:app", "--app-dir", "examples/web_service"]  # as its README says
NS = "{https://xml-pipeline.org/ns/envelope/v1}"


def envelope(sender: str, to: str, fields: str = "") -> bytes:
    """A v1 envelope carrying a ``QuoteRequest`` with ``fields`` (its elements, as XML)."""
    return (
        f'<message xmlns="https://xml-pipeline.org/ns/envelope/v1"><meta><from>{sender}</from>'
        f'<to>{to}</to><thread/></meta><QuoteRequest xmlns="">{fields}</QuoteRequest></message>'
    ).encode()


def test_web_service(repo_copy: Path) -> None:
    printed = run_readme("web_service", repo_copy, tool_env())
    main = printed["python examples/web_service/main.py"]
    statuses = re.findall(r"^  -> (\d{3}) ", main, re.MULTILINE)
    assert statuses == ["200", "422", "422", "400", "422", "200", "400", "400", "200", "504"]
    answer = re.search(r"<from>(\w+)</from><to>(\w+)</to><thread>\w+</thread>", main)
    assert answer and answer.groups() == ("quoter", "shop"), "the answer envelope goes back"
    readme = (EXAMPLES / "web_service" / "README.md").read_text(encoding="utf-8")
    assert f"`{' '.join(UVICORN)}`" in readme, "the tests below serve it as the README says"


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"  # the client's event loop: the server runs in a process of its own


async def wait_open(client: httpx.AsyncClient, count: int) -> None:
    """Wait until ``count`` conversations are open in the served organism (GET /stats)."""
    with anyio.fail_after(20):
        while True:
            stats = (await client.get("/stats")).json()
            if stats["conversations"] - stats["answered"] - stats["failed"] == count:
                return
            await anyio.sleep(0.01)


async def slow_work(
    client: httpx.AsyncClient, seconds: float, tickets: range, results: dict[int, object]
) -> None:
    """POST /slow once per ticket, all at once; puts in ``results`` each ticket's response, or
    what its request raised: every request is accounted for."""

    async def one(ticket: int) -> None:
        try:
            work = {"seconds": seconds, "ticket": ticket}
            results[ticket] = await client.post("/slow", json=work)
        except httpx.HTTPError as exc:
            results[ticket] = exc

    async with anyio.create_task_group() as group:
        for ticket in tickets:
            group.start_soon(one, ticket)


def stopped(server: Uvicorn, signum: int) -> tuple[int, str]:
    """Send ``signum`` and wait for the server to end; its exit status and its log."""
    server.signal(signum)
    return server.wait(30), server.log


@pytest.mark.anyio
async def test_web_service_under_uvicorn_answers_50_requests_at_once(repo_copy: Path) -> None:
    """Half JSON through the bridge, half raw envelopes through the gateway, all in flight at
    once; each answer is the one to its own request."""
    answers: dict[int, httpx.Response] = {}
    with serve(UVICORN, repo_copy, tool_env()) as server:
        async with httpx.AsyncClient(base_url=server.url, timeout=30) as client:

            async def call(n: int) -> None:
                if n % 2:
                    answers[n] = await client.post("/quote", json={"item": "tea", "quantity": n})
                else:
                    fields = f"<item>tea</item><quantity>{n}</quantity>"
                    body = envelope(f"shop-{n}", "quoter", fields)
                    answers[n] = await client.post("/gateway", content=body)

            async with anyio.create_task_group() as group:
                for n in range(1, 51):
                    group.start_soon(call, n)
            stats = (await client.get("/stats")).json()
        status, log = stopped(server, signal.SIGINT)
    assert sorted(answers) == list(range(1, 51))
    for n, response in answers.items():
        assert response.status_code == 200, response.text
        total = str(Decimal("4.50") * n)
        if n % 2:
            assert response.json() == {
                "item": "tea",
                "quantity": n,
                "unit_price": "4.50",
                "total": total,
            }
        else:
            assert response.headers["content-type"] == "application/xml"
            root = etree.fromstring(response.content)
            assert root.findtext(f"{NS}meta/{NS}from") == "quoter"
            assert root.findtext(f"{NS}meta/{NS}to") == f"shop-{n}"
            assert root.findtext("Quote/total") == total
    assert (stats["conversations"], stats["answered"], stats["failed"]) == (50, 50, 0)
    assert status == 0, log
    assert "organism stopped: 50 conversations (50 answered, 0 failed, 0 still open)" in log


# (path, body, status, reason): refused before any handler runs
REFUSALS: list[tuple[str, bytes, int, str]] = [
    ("/quote", b"[" * 100_000, 400, "too_deep"),  # deeper than Python's JSON reader goes
    ("/quote", b'{"item": "t\xe9a", "quantity": 1}', 400, "malformed"),  # not UTF-8
    ("/quote", b"[1, 2]", 422, "schema_violation"),  # JSON, but not an object
    ("/quote", b'{"item": "tea", "quantity": 1.5}', 422, "schema_violation"),
    ("/quote", b'{"item": "tea", "quantity": 3}' + b" " * 300_000, 413, "too_large"),
    ("/slow", b'{"seconds": "soon"}', 422, "schema_violation"),
    ("/gateway", b"<message", 400, "malformed"),
    ("/gateway", b"<QuoteRequest/>", 400, "not_an_envelope"),
    ("/gateway", b"<a>" * 300 + b"</a>" * 300, 400, "too_deep"),
    ("/gateway", b"<message>" + b"<a/>" * 300_000 + b"</message>", 413, "too_large"),
    ("/gateway", envelope("quoter", "quoter"), 403, "forged_sender"),
    ("/gateway", envelope("shop", "catalog"), 400, "no_route"),  # catalog takes PriceQuery
    (
        "/gateway",
        envelope("shop", "quoter", "<item>tea</item><quantity>lots</quantity>"),
        422,
        "schema_violation",
    ),
]


@pytest.mark.anyio
async def test_web_service_refuses_bad_and_hostile_input_with_the_reason(repo_copy: Path) -> None:
    """JSON and XML are refused with a 4xx and a JSON body naming the reason, before any
    handler runs; the organism counts the envelopes it refused, and goes on answering."""
    with serve(UVICORN, repo_copy, tool_env()) as server:
        async with httpx.AsyncClient(base_url=server.url, timeout=30) as client:
            for path, body, status, reason in REFUSALS:
                response = await client.post(path, content=body)
                where = f"POST {path} {body[:60]!r}"
                assert response.status_code == status, f"{where}: {response.text}"
                refusal = response.json()
                assert refusal["reason"] == reason and refusal["message"], f"{where}: {refusal}"

            async def chunks() -> AsyncIterator[bytes]:  # no Content-Length: read up to the cap
                for _ in range(30):
                    yield b" " * 10_000

            response = await client.post("/quote", content=chunks())
            assert (response.status_code, response.json()["reason"]) == (413, "too_large")
            schema = (await client.get("/quote/schema")).json()
            assert schema["required"] == ["item", "quantity"], schema
            ok = await client.post("/quote", json={"item": "cocoa", "quantity": 2})
            assert ok.json()["total"] == "10.00"
            stats = (await client.get("/stats")).json()
        status, log = stopped(server, signal.SIGINT)
    reaching = [r for r in REFUSALS if r[0] == "/gateway" and r[3] != "too_large"]
    assert stats["rejected"] == len(reaching), "the app refused too_large before the organism"
    assert (stats["conversations"], stats["answered"]) == (1, 1)
    assert status == 0, log


@pytest.mark.anyio
async def test_web_service_sheds_load_with_503_and_retry_after(repo_copy: Path) -> None:
    """Past ingress_limit (64) open conversations, a request waits ingress_wait_seconds for a
    slot, then gets 503 with Retry-After; the 64 in flight are answered."""
    with serve(UVICORN, repo_copy, tool_env()) as server:
        first: dict[int, object] = {}
        late: dict[int, object] = {}
        client = httpx.AsyncClient(base_url=server.url, timeout=30)
        async with client, anyio.create_task_group() as group:
            group.start_soon(slow_work, client, 2.5, range(64), first)
            await wait_open(client, 64)
            await slow_work(client, 2.5, range(64, 70), late)
        async with httpx.AsyncClient(base_url=server.url) as client:
            stats = (await client.get("/stats")).json()
        status, log = stopped(server, signal.SIGINT)
    for ticket, response in first.items():
        assert isinstance(response, httpx.Response) and response.status_code == 200, response
        assert response.json() == {"ticket": ticket, "seconds": 2.5}
    assert len(first) == 64
    for response in late.values():
        assert isinstance(response, httpx.Response) and response.status_code == 503, response
        assert response.headers["retry-after"] == "1"
        assert response.json()["reason"] == "overloaded"
    assert len(late) == 6 and stats["overloaded"] == 6
    assert status == 0, log


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("signum", "exit_status"),
    [(signal.SIGINT, 0), (signal.SIGTERM, -signal.SIGTERM)],
    ids=["SIGINT", "SIGTERM"],
)
async def test_web_service_stops_cleanly_with_work_in_flight(
    repo_copy: Path, signum: int, exit_status: int
) -> None:
    """Stopped while ten slow requests are in the organism: uvicorn refuses new connections,
    each request in flight gets its answer, then the lifespan leaves the organism with nothing
    open. After SIGTERM uvicorn ends by that signal, re-raised once it has stopped (so a
    supervisor sees the process terminated as asked); after Ctrl-C it exits 0."""
    with serve(UVICORN, repo_copy, tool_env()) as server:
        results: dict[int, object] = {}
        client = httpx.AsyncClient(base_url=server.url, timeout=20)
        async with client, anyio.create_task_group() as group:
            group.start_soon(slow_work, client, 1.5, range(10), results)
            await wait_open(client, 10)
            server.signal(signum)
            # logged once it stopped listening, while the requests in flight go on
            await anyio.to_thread.run_sync(server.log_when, "Waiting for connections to close")
            async with httpx.AsyncClient(base_url=server.url) as late:
                with pytest.raises(httpx.ConnectError):  # refused at once, not left hanging
                    await late.post("/slow", json={"seconds": 0, "ticket": 99})
        status = server.wait(30)
        log = server.log
    assert sorted(results) == list(range(10))
    for ticket, response in results.items():
        assert isinstance(response, httpx.Response), f"ticket {ticket}: {response!r}"
        assert response.status_code == 200 and response.json()["ticket"] == ticket
    assert status == exit_status, log
    steps = [
        "Shutting down",
        "Waiting for application shutdown.",
        "organism stopped: 10 conversations (10 answered, 0 failed, 0 still open)",
        "Application shutdown complete.",
    ]
    assert all(step in log for step in steps), log
    assert [log.index(step) for step in steps] == sorted(log.index(step) for step in steps)


# -- testing_your_organism: its tests, run by pytest in a process of their own ---------------


def test_testing_your_organism(repo_copy: Path) -> None:
    printed = run_readme("testing_your_organism", repo_copy, tool_env())
    tests = printed["python -m pytest examples/testing_your_organism -q"]
    assert re.search(r"^\d+ passed in ", tests, re.MULTILINE), tests
    assert not re.search(r"skipped|failed|error|warning", tests), tests
    assert "WARNING handlers: paging on-call" not in tests, "the fake pager pages nobody"
    source = (EXAMPLES / "testing_your_organism" / "test_support_desk.py").read_text("utf-8")
    assert not re.search(r"mark\.(anyio|asyncio|trio)|anyio_backend", source), "no marker"
    for used in ("run_organism(ORGANISM, replace=", "Fake(", "capture(org)", "async def desk"):
        assert used in source, f"the example shows {used}"
    # the plugin is what runs them: without it pytest refuses every one
    without = run([*pytest_on_the_example(), "-p", "no:xml_pipeline"], repo_copy, tool_env())
    assert without.returncode == 1, completed(without, "the example's tests without the plugin")
    assert "async def functions are not natively supported" in without.stdout


def pytest_on_the_example() -> list[str]:
    return [sys.executable, "-m", "pytest", "examples/testing_your_organism", "-q"]


def test_the_projects_own_run_leaves_the_examples_tests_to_their_own_process() -> None:
    """Collected with the suite, the example's tests would import its ``handlers`` into the
    suite's process, where other organisms' handler modules are imported too."""
    with (ROOT / "pyproject.toml").open("rb") as file:
        settings = tomllib.load(file)["tool"]["pytest"]["ini_options"]
    assert settings["testpaths"] == ["tests"]
