"""Every fenced block of README.md works as written.

Blocks are found by their fences, never by line number, so the README can change around them:

- ``python``: run as a script, with a fresh copy of the repository as the working directory
  (relative paths such as ``organisms/hello/organism.yaml`` work, and nothing is written into
  the checkout). A block that defines ``test_`` functions is run by pytest with the project's
  settings. A block that serves "until Ctrl-C" must print a line and keep running; it is then
  interrupted and must exit cleanly.
- ``sh``: each command line runs in that copy with this interpreter's ``python``, ``organism``,
  ``mypy`` and ``ruff`` first on ``PATH``. Not run: ``pip install ...`` (CI's ``.ci/run`` runs
  the README's install and test commands word for word in a fresh venv) and the suite itself
  (``python -m pytest ...``, which would run this test again): the suite's command line is
  checked by collecting the tests with its arguments (``--collect-only``). Whatever a command
  leaves running is killed when it exits.
- ``yaml``: accepted by ``organism validate`` (the config reader, then the imports) in the hello
  organism's folder: a whole organism file (with ``listeners:``) as it is, a fragment
  (``backend:`` alone) merged into the hello organism's file.
- ``xml``: an envelope, parsed as one.
- ``mermaid``: the output of the ``organism graph ...`` command quoted on the line before it
  (`` `organism graph organisms/hello/organism.yaml` prints:``), word for word: a picture
  that no longer matches the organism or the command fails here.
- A block right after a line that names a repository file (`` `organisms/hello/handlers.py`: ``)
  is that file, word for word.

Blocks that read ``REDIS_URL`` get the test's private redis-server there. Examples never use a
fixed port of their own. Finding blocks and running commands in a copy of the repository is
`tests.doc_blocks`, shared with ``tests/test_examples.py``.
"""

from __future__ import annotations

import re
import shlex
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import yaml

from tests.doc_blocks import (
    ROOT,
    Block,
    commands,
    completed,
    copy_repository,
    markdown_blocks,
    run,
    run_shell,
    tool_env,
)
from tests.redis_server import redis_server, redis_url  # noqa: F401 - fixtures
from xml_pipeline._wire.envelope import Envelope

README = ROOT / "README.md"
HELLO = Path("organisms/hello/organism.yaml")
BLOCKS = markdown_blocks(README)


def params(*langs: str) -> list[object]:
    """The blocks of these languages as pytest params, marked by what they need."""
    chosen: list[object] = []
    for block in BLOCKS:
        if block.lang not in langs:
            continue
        marks: list[pytest.MarkDecorator] = []
        if "REDIS_URL" in block.text or "benchmarks/bench_backends" in block.text:
            marks.append(pytest.mark.redis)
        if any(slow in block.text for slow in ("benchmarks/", "mypy", "python -m pytest")):
            marks.append(pytest.mark.slow)  # tens of seconds: benchmarks, type check, collection
        chosen.append(pytest.param(block, id=f"line{block.line}", marks=marks))
    return chosen


@pytest.fixture(scope="module")
def repo_copy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the repository to run the README in: its commands may write files."""
    return copy_repository(tmp_path_factory.mktemp("readme") / "repo")


@pytest.fixture
def env(request: pytest.FixtureRequest) -> dict[str, str]:
    """The environment of a block: this venv first on PATH, REDIS_URL when the block uses it."""
    environ = tool_env()
    callspec = getattr(request.node, "callspec", None)
    block = callspec.params.get("block") if callspec is not None else None
    if isinstance(block, Block) and "REDIS_URL" in block.text:
        environ["REDIS_URL"] = request.getfixturevalue("redis_url")
    return environ


def test_the_readme_has_blocks_of_every_kind_this_test_runs() -> None:
    """Guards the extraction itself: a broken fence pattern would silently test nothing."""
    langs = {block.lang for block in BLOCKS}
    assert {"python", "sh", "yaml", "mermaid"} <= langs, langs
    assert all(block.lang for block in BLOCKS), "every fenced block names its language"


# -- python ---------------------------------------------------------------------------------


@pytest.mark.parametrize("block", params("python"))
def test_python_block_runs(
    block: Block, env: dict[str, str], repo_copy: Path, tmp_path: Path
) -> None:
    if re.search(r"^(async )?def test_", block.text, re.MULTILINE):
        script = tmp_path / f"test_readme_line{block.line}.py"
        script.write_text(block.text)
        command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"]
        command += ["-c", str(repo_copy / "pyproject.toml"), "--rootdir", str(tmp_path)]
        done = run([*command, str(script)], repo_copy, env)
        assert done.returncode == 0, completed(done, str(block))
        assert re.search(r"\b\d+ passed\b", done.stdout) and "skipped" not in done.stdout
        return
    script = tmp_path / f"readme_line{block.line}.py"
    script.write_text(block.text)
    if "until Ctrl-C" in block.text:
        first_line, done = serve_then_interrupt([sys.executable, str(script)], repo_copy, env)
        assert first_line.strip(), f"{block} printed nothing before serving"
        assert done.returncode == 0, completed(done, f"{block} after Ctrl-C")
        return
    done = run([sys.executable, str(script)], repo_copy, env)
    assert done.returncode == 0, completed(done, str(block))


def serve_then_interrupt(
    command: list[str], cwd: Path, env: dict[str, str]
) -> tuple[str, subprocess.CompletedProcess[str]]:
    """Start a serving script, wait for its first line, check it still runs, press Ctrl-C."""
    process = subprocess.Popen(
        command,
        cwd=cwd,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        first_line = read_line(process, timeout=60)
        assert process.poll() is None, "the server stopped on its own instead of serving"
        process.send_signal(signal.SIGINT)
        stdout, stderr = process.communicate(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    return first_line, subprocess.CompletedProcess(
        command, process.returncode, first_line + stdout, stderr
    )


def read_line(process: subprocess.Popen[str], timeout: float) -> str:
    """The first line the process prints, waiting at most ``timeout`` seconds."""
    stdout = process.stdout
    assert stdout is not None
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.append(stdout.readline()), daemon=True)
    reader.start()
    reader.join(timeout)
    if not lines:
        process.kill()
        reader.join()
        stderr = process.stderr.read() if process.stderr else ""
        pytest.fail(f"no line from {process.args!r} in {timeout} s; stderr:\n{stderr}")
    return lines[0]


# -- sh -------------------------------------------------------------------------------------


@pytest.mark.timeout(900)  # several commands; the benchmarks' quick runs take ~20 s together
@pytest.mark.parametrize("block", params("sh"))
def test_shell_block_runs(block: Block, env: dict[str, str], repo_copy: Path) -> None:
    ran = 0
    for line in commands(block):
        for part in line.split(" && "):
            words = shlex.split(part, comments=True)
            if words[:2] == ["pip", "install"]:
                continue  # CI installs (see the module docstring)
            if words[:3] == ["python", "-m", "pytest"]:
                done = run(
                    [*words, "--collect-only", "-q", "-p", "no:cacheprovider"], repo_copy, env
                )
                assert done.returncode == 0, completed(done, f"{block}: {part} (collecting)")
                assert re.search(r"\b\d+ tests? collected\b", done.stdout), done.stdout[-2000:]
            else:
                done = run_shell(part, repo_copy, env)
                assert done.returncode == 0, completed(done, f"{block}: {part}")
            ran += 1
    assert ran, f"{block} has no command that runs"


# -- yaml and xml ---------------------------------------------------------------------------


@pytest.mark.parametrize("block", params("yaml"))
def test_yaml_block_is_read_by_the_config_reader(
    block: Block, env: dict[str, str], repo_copy: Path
) -> None:
    """`organism validate` (the config reader, then the imports) accepts it in hello's folder.

    In a subprocess: loading hello's handlers here would give this test process a `handlers`
    module from the copy, which other tests expect from the checkout.
    """
    document = yaml.safe_load(block.text)
    assert isinstance(document, dict), f"{block} is not a mapping"
    hello = repo_copy / HELLO
    if "listeners" in document:
        text = block.text
    else:  # a fragment: its sections replace the hello organism's
        organism = yaml.safe_load(hello.read_text())
        organism.update(document)
        text = yaml.safe_dump(organism, sort_keys=False)
    file = hello.parent / f"readme-line{block.line}.yaml"
    file.write_text(text)
    done = run(["organism", "validate", str(file)], repo_copy, env)
    assert done.returncode == 0, completed(done, str(block))
    assert ": ok (" in done.stdout


@pytest.mark.parametrize("block", params("xml"))
def test_xml_block_is_an_envelope(block: Block) -> None:
    envelope = Envelope.from_bytes(block.text.encode())
    assert envelope.to


_GRAPH_COMMAND = re.compile(r"`(organism graph [^`]+)`[^`]*$")


@pytest.mark.parametrize("block", params("mermaid"))
def test_mermaid_block_is_what_organism_graph_prints(
    block: Block, env: dict[str, str], repo_copy: Path
) -> None:
    lines = README.read_text(encoding="utf-8").splitlines()[: block.line - 1]
    before = [line for line in lines if line.strip()]
    command = _GRAPH_COMMAND.search(before[-1]) if before else None
    assert command, f"{block}: the line before a mermaid block quotes the `organism graph` it is"
    done = run(shlex.split(command[1]), repo_copy, env)
    assert done.returncode == 0, completed(done, f"{block}: {command[1]}")
    assert block.text == done.stdout, f"{block} differs from what {command[1]!r} prints now"


# -- file listings --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "block", [pytest.param(b, id=f"line{b.line}") for b in BLOCKS if b.names_file]
)
def test_a_listing_of_a_repository_file_is_that_file(block: Block) -> None:
    assert block.names_file is not None
    file = ROOT / block.names_file
    assert file.is_file(), f"{block} lists {block.names_file}, which does not exist"
    assert block.text == file.read_text(encoding="utf-8"), (
        f"{block} differs from {block.names_file}: make them the same"
    )


# -- blocks that work together ----------------------------------------------------------------


def test_the_manager_server_block_serves_the_manager_yaml_block(
    env: dict[str, str], repo_copy: Path, tmp_path: Path
) -> None:
    """The server script prints an address; the YAML fragment, given it, runs hello there."""
    servers = [b for b in BLOCKS if b.lang == "python" and "start_manager_server" in b.text]
    fragments = [b for b in BLOCKS if b.lang == "yaml" and "type: manager" in b.text]
    assert len(servers) == len(fragments) == 1, "the README shows one manager server and YAML"
    server, fragment = servers[0], fragments[0]
    script = tmp_path / "server.py"
    script.write_text(server.text)
    process = subprocess.Popen(
        [sys.executable, str(script)],
        cwd=repo_copy,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        printed = read_line(process, timeout=60)
        match = re.search(r"manager_address: (\S+:\d+)", printed)
        assert match, f"{server} printed {printed!r}, not its manager_address"
        backend = yaml.safe_load(fragment.text)
        backend["backend"]["manager_address"] = match[1]
        organism = yaml.safe_load((repo_copy / HELLO).read_text())
        organism.update(backend)
        file = repo_copy / HELLO.parent / "organism-manager.yaml"
        file.write_text(yaml.safe_dump(organism, sort_keys=False))
        greeting = "<Greeting><name>Ada</name></Greeting>"
        done = run(
            ["organism", "run", str(file), "--to", "greeter", "--send", greeting], repo_copy, env
        )
        assert done.returncode == 0, completed(done, f"hello on {fragment}'s backend")
        assert done.stdout.strip() == "<Reply><message>HELLO, ADA!</message></Reply>"
    finally:
        process.send_signal(signal.SIGINT)
        try:
            process.communicate(timeout=30)
        finally:
            if process.poll() is None:
                process.kill()
                process.communicate()


def test_the_quick_start_prints_what_the_readme_says(env: dict[str, str], repo_copy: Path) -> None:
    """The sentence under the quick start names the answer (standard output) and the log line
    (standard error) of its first command, and how to leave the log line out."""
    text = README.read_text(encoding="utf-8")
    said = re.search(
        r"The first prints `([^`]+)` on standard output, and on\s+standard error the log line "
        r"`([^`]+)`\s+\(`organism --log-level (\w+) run \.\.\.` leaves it out\)",
        text,
    )
    assert said, "the quick start no longer says what its first command prints"
    command = re.search(r"pip install -e \. && (organism run [^\n]+)", text)
    assert command, "the quick start's first command is not `pip install -e . && organism run ...`"
    words = shlex.split(command[1])
    done = run(words, repo_copy, env)
    assert done.returncode == 0, completed(done, "the quick start")
    assert done.stdout.strip() == said[1]
    assert done.stderr.strip() == said[2]
    quiet = run([words[0], "--log-level", said[3], *words[1:]], repo_copy, env)
    assert quiet.returncode == 0, completed(quiet, "the quick start, quieter")
    assert (quiet.stdout.strip(), quiet.stderr) == (said[1], "")
