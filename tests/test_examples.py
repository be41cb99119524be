"""Every example in ``examples/`` runs as its README says, and shows what it claims.

An example is a folder of ``examples/`` with ``organism.yaml``, ``handlers.py``, ``main.py``
and ``README.md``, listed in ``examples/README.md``. Its README is run as written, from a copy
of the repository (`tests.doc_blocks`): the commands of its ``console`` blocks run in real
subprocesses and must print what the blocks show; a ``python`` or ``yaml`` block is an excerpt
of one of the example's own files, word for word. Each example then has a test here named
after it, which checks the claims behind what its commands printed.

The Redis example gets the test's private redis-server in ``REDIS_URL``; no example uses a
fixed port of its own.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

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

EXAMPLES = ROOT / "examples"
FILES = ("README.md", "organism.yaml", "handlers.py", "main.py")


def example_names() -> list[str]:
    """The folders of ``examples/``."""
    return sorted(
        path.name
        for path in EXAMPLES.iterdir()
        if path.is_dir() and not path.name.startswith((".", "_"))
    )


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
        assert f"(examples/{name}/)" in readme, f"README.md's Examples section links {name}"


def test_every_example_has_a_test_here() -> None:
    """A new example cannot go untested: its README is run by a test named after it."""
    untested = [name for name in example_names() if f"test_{name}" not in globals()]
    assert not untested, f"add a test named test_<example> for {untested}"


@pytest.mark.parametrize("name", example_names())
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
    folder = ROOT / Path(block.file).parent
    texts = [(folder / file).read_text(encoding="utf-8") for file in FILES[1:]]
    assert any(block.text in text for text in texts), (
        f"{block} is not word for word in {', '.join(FILES[1:])}: copy it from there"
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
