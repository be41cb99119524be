"""The `organism` command, run for real as `python -m xml_pipeline`."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import threading
from pathlib import Path

import jsonschema

from xml_pipeline import Envelope

HELLO = str(Path(__file__).resolve().parents[1] / "organisms" / "hello" / "organism.yaml")
CPU_META_CALL = Path(__file__).resolve().parent / "fixtures" / "cpu_meta_call" / "organism.yaml"
NS = "https://xml-pipeline.org/ns/envelope/v1"


def organism(*args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "xml_pipeline", *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def envelope(name: str, *, sender: str = "") -> str:
    """A v1 envelope to hello's greeter, on one line."""
    meta = f"<from>{sender}</from><to>greeter</to>" if sender else "<to>greeter</to>"
    payload = f'<Greeting xmlns=""><name>{name}</name></Greeting>'
    return f'<message xmlns="{NS}"><meta>{meta}</meta>{payload}</message>'


def answers(stdout: str) -> dict[int, str]:
    """The answers on stdout (``line N: <message ...>``) by line: each Reply's message."""
    found: dict[int, str] = {}
    for text in stdout.splitlines():
        match = re.fullmatch(r"line (\d+): (<message .*</message>)", text)
        assert match, f"not an answer line: {text!r}"
        env = Envelope.from_bytes(match[2].encode())
        assert env.sender == "greeter" and env.thread, env
        found[int(match[1])] = str(env.payload.findtext("message"))  # type: ignore[attr-defined]
    return found


def test_send_prints_the_answer_xml_and_exits_0() -> None:
    done = organism(
        "run", HELLO, "--to", "greeter", "--send", "<Greeting><name>Ada</name></Greeting>"
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "<Reply><message>HELLO, ADA!</message></Reply>"
    assert "INFO" in done.stderr, "long-running commands log what they do"


def test_send_of_an_invalid_payload_explains_on_stderr_and_exits_1() -> None:
    done = organism("run", HELLO, "--to", "greeter", "--send", "<Greeting><nam>x</nam></Greeting>")
    assert done.returncode == 1
    assert done.stdout == ""
    assert "[schema_violation]" in done.stderr and "/Greeting/nam" in done.stderr


def test_stdin_takes_envelopes_and_at_lines_and_reports_each_failure_with_its_line() -> None:
    lines = ["@greeter <Greeting><name>Bob</name></Greeting>", envelope("Cy"), "@nobody <X/>", ""]
    done = organism("--log-level", "WARNING", "run", HELLO, stdin="\n".join(lines))
    assert done.returncode == 1
    assert answers(done.stdout) == {1: "HELLO, BOB!", 2: "HELLO, CY!"}
    assert "line 3: failed [no_route] no listener named 'nobody'" in done.stderr
    assert "INFO" not in done.stderr
    assert "done: 2 answered, 1 failed (no_route 1)" in done.stderr, "a summary, as a warning"


def test_a_misspelt_listener_in_an_at_line_or_to_gets_the_did_you_mean_of_the_library() -> None:
    """``@greetr`` and ``--to greetr`` are told what ``org.request("greetr", ...)`` is told."""
    done = organism("run", HELLO, stdin="@greetr <Greeting><name>Bob</name></Greeting>\n")
    assert "line 1: failed [no_route] no listener named 'greetr'; did you mean 'greeter'?" in (
        done.stderr
    )
    done = organism("run", HELLO, "--to", "greetr", "--send", "<Greeting><name>x</name></Greeting>")
    assert done.returncode == 1
    assert "[no_route] no listener named 'greetr'; did you mean 'greeter'?" in done.stderr


def test_validate_reports_every_problem_with_file_key_path_and_line(tmp_path: Path) -> None:
    bad = tmp_path / "organism.yaml"
    bad.write_text(
        "organism:\n  name: broken\nlisteners:\n  - name: a\n    payload_class: nowhere.Thing\n"
        "    handler: nowhere.run\n    peer: [b]\n"
    )
    done = organism("validate", str(bad))
    assert done.returncode == 2
    assert f"{bad}:7: listeners[0].peer" in done.stderr and "did you mean 'peers'" in done.stderr


def test_validate_imports_everything_and_exits_0_when_clean() -> None:
    done = organism("validate", HELLO)
    assert done.returncode == 0, done.stderr
    assert "ok (2 listeners: greeter, shouter)" in done.stdout


def test_schema_prints_the_xsd_the_example_document_and_the_prompt_description() -> None:
    done = organism("schema", HELLO, "greeter")
    assert done.returncode == 0, done.stderr
    assert '<xs:element name="Greeting">' in done.stdout
    assert "<!-- example Greeting -->\n<Greeting>\n  <name>text</name>\n</Greeting>" in done.stdout
    assert "<name> string (required)" in done.stdout
    assert "Shout" not in done.stdout


def test_schema_json_prints_each_listeners_json_schema_and_an_example_it_accepts() -> None:
    done = organism("schema", HELLO, "--json")
    assert done.returncode == 0, done.stderr
    printed = json.loads(done.stdout)  # one JSON document, whatever the number of listeners
    assert sorted(printed) == ["greeter", "shouter"]
    greeter = printed["greeter"]
    assert greeter["description"] == "Greets people by name"
    assert greeter["example"] == {"name": "text"}
    assert greeter["schema"]["title"] == "Greeting"
    jsonschema.Draft202012Validator.check_schema(greeter["schema"])
    assert jsonschema.Draft202012Validator(greeter["schema"]).is_valid(greeter["example"])
    assert not jsonschema.Draft202012Validator(greeter["schema"]).is_valid({"nmae": "x"})
    one = organism("schema", HELLO, "shouter", "--json")
    assert one.returncode == 0, one.stderr
    assert list(json.loads(one.stdout)) == ["shouter"]
    assert "<xs:" not in one.stdout


def test_schema_of_a_listener_that_does_not_exist_is_an_error() -> None:
    done = organism("schema", HELLO, "nobody", "--json")
    assert done.returncode == 2 and "no listener 'nobody'" in done.stderr


def test_send_without_to_is_refused() -> None:
    done = organism("run", HELLO, "--send", "<Greeting><name>x</name></Greeting>")
    assert done.returncode == 2 and "--to and --send go together" in done.stderr


def test_stdin_waits_for_room_instead_of_failing_when_the_organism_is_full(tmp_path: Path) -> None:
    hello = Path(HELLO).parent
    (tmp_path / "handlers.py").write_text((hello / "handlers.py").read_text())
    text = (hello / "organism.yaml").read_text()
    (tmp_path / "organism.yaml").write_text(
        text.replace("  name: hello\n", "  name: hello\n  ingress_limit: 2\n")
    )
    lines = [f"@greeter <Greeting><name>n{i}</name></Greeting>" for i in range(40)]
    done = organism("run", str(tmp_path / "organism.yaml"), stdin="\n".join(lines))
    assert done.returncode == 0, done.stderr
    assert len(done.stdout.splitlines()) == 40


def test_unreachable_backend_is_an_error_line_not_a_traceback(tmp_path: Path) -> None:
    hello = Path(HELLO).parent
    (tmp_path / "handlers.py").write_text((hello / "handlers.py").read_text())
    (tmp_path / "organism.yaml").write_text(
        (hello / "organism.yaml").read_text()
        + "backend:\n  type: redis\n  redis_url: redis://127.0.0.1:9/0\n"
    )
    done = organism("run", str(tmp_path / "organism.yaml"), "--to", "greeter", "--send", "<x/>")
    assert done.returncode == 1
    assert "Traceback" not in done.stderr
    assert "error: [backend_unreachable]" in done.stderr and "127.0.0.1:9" in done.stderr


def test_log_level_goes_before_or_after_the_subcommand_in_any_case() -> None:
    send = ["--to", "greeter", "--send", "<Greeting><name>Ada</name></Greeting>"]
    after = organism("run", HELLO, "--log-level", "warning", *send)
    assert after.returncode == 0, after.stderr
    assert "INFO" not in after.stderr and "HELLO, ADA!" in after.stdout
    before = organism("--log-level", "debug", "run", HELLO, *send)
    assert before.returncode == 0, before.stderr
    assert "INFO" in before.stderr
    both = organism("--log-level", "info", "validate", HELLO, "--log-level", "ERROR")
    assert both.returncode == 0, both.stderr
    unknown = organism("validate", HELLO, "--log-level", "loud")
    assert unknown.returncode == 2 and "invalid choice: 'LOUD'" in unknown.stderr


def test_validate_reports_a_payload_class_that_fails_at_import_at_each_listener(
    tmp_path: Path,
) -> None:
    (tmp_path / "handlers.py").write_text(
        "from typing import Any\n"
        "from xml_pipeline import payload\n"
        "\n"
        "\n"
        "async def handle(msg: Any, meta: Any) -> None:\n"
        "    pass\n"
        "\n"
        "\n"
        "@payload\n"
        "class Order:  # not a dataclass\n"
        "    number: int\n"
    )
    (tmp_path / "organism.yaml").write_text(
        "organism:\n  name: broken\nlisteners:\n"
        "  - name: a\n    payload_class: handlers.Order\n    handler: handlers.handle\n"
        "  - name: b\n    payload_class: handlers.Order\n    handler: handlers.handle\n"
    )
    done = organism("validate", str(tmp_path / "organism.yaml"))
    assert done.returncode == 2
    assert "Traceback" not in done.stderr
    for line, listener in ((5, 0), (8, 1)):
        assert f"organism.yaml:{line}: listeners[{listener}].payload_class" in done.stderr
    assert done.stderr.count("PayloadTypeError") == 2
    # the class's own line (PayloadTypeError names it), not the library's
    assert done.stderr.count(f"{tmp_path / 'handlers.py'}:10") == 2, done.stderr


# -- organism run: envelopes answered concurrently, tagged with their line --------------------


def test_stdin_envelopes_are_answered_each_tagged_with_its_input_line() -> None:
    lines = [envelope("Ada"), "", envelope("Bob", sender="client"), envelope("Cy")]
    done = organism("run", HELLO, stdin="\n".join(lines) + "\n")
    assert done.returncode == 0, done.stderr
    assert answers(done.stdout) == {1: "HELLO, ADA!", 3: "HELLO, BOB!", 4: "HELLO, CY!"}
    assert "<to>client</to>" in done.stdout, "the answer goes back to the envelope's sender"
    assert "done: 3 answered, 0 failed" in done.stderr


def test_a_malformed_line_is_reported_with_its_line_and_reason_and_the_rest_answered() -> None:
    lines = [envelope("Ada"), "<message><meta>", envelope("Bob").replace("greeter", "nobody")]
    lines.append(envelope("Cy"))
    done = organism("run", HELLO, stdin="\n".join(lines))
    assert done.returncode == 1
    assert answers(done.stdout) == {1: "HELLO, ADA!", 4: "HELLO, CY!"}
    failures = [t for t in done.stderr.splitlines() if t.startswith("line ")]
    assert len(failures) == 2, done.stderr
    assert failures[0].startswith("line 2: failed [malformed] "), failures
    assert "a line is a v1 envelope, or '@listener <payload-xml>'" in failures[0]
    assert failures[1].startswith("line 3: failed [no_route] "), failures
    assert "done: 2 answered, 2 failed (malformed 1, no_route 1)" in done.stderr


def test_a_newline_inside_an_answer_keeps_it_on_one_line() -> None:
    done = organism("run", HELLO, stdin=envelope("a&#10;b") + "\n")
    assert done.returncode == 0, done.stderr
    assert len(done.stdout.splitlines()) == 1 and "&#10;" in done.stdout
    assert answers(done.stdout) == {1: "HELLO, A\nB!"}


def test_file_takes_envelopes_over_several_lines_each_tagged_with_its_first_line(
    tmp_path: Path,
) -> None:
    def spread(name: str) -> str:
        return envelope(name).replace("<meta>", "\n  <meta>").replace("<Greeting", "\n  <Greeting")

    broken = spread("Bob").replace("</name>", "</nam>")
    text = f"{spread('Ada')}\n\n{broken}\n{envelope('Cy')}\n{spread('Dee')}"  # no final newline
    file = tmp_path / "envelopes.xml"
    file.write_text(text)
    done = organism("run", HELLO, "--file", str(file))
    assert done.returncode == 1
    assert answers(done.stdout) == {1: "HELLO, ADA!", 8: "HELLO, CY!", 9: "HELLO, DEE!"}
    (failure,) = [t for t in done.stderr.splitlines() if t.startswith("line ")]
    assert failure.startswith("line 5: failed [malformed] the document starting at line 5 ")
    assert "(line 7)" in failure, "the line in the file where it breaks"
    # the same from stdin with --file -
    piped = organism("run", HELLO, "--file", "-", stdin=text)
    assert answers(piped.stdout) == answers(done.stdout)


def test_file_reports_an_envelope_the_organism_refuses_at_its_line_in_the_file(
    tmp_path: Path,
) -> None:
    file = tmp_path / "envelopes.xml"
    body = '<Greeting xmlns=""><nam>x</nam></Greeting>'
    file.write_text(
        f'\n<message xmlns="{NS}">\n<meta><to>greeter</to></meta>\n{body}\n</message>\n'
    )
    done = organism("run", HELLO, "--file", str(file))
    assert done.returncode == 1 and done.stdout == ""
    assert "line 2: failed [schema_violation]" in done.stderr
    assert "its line 3 is line 4 of the input" in done.stderr, done.stderr


def test_file_that_cannot_be_read_or_with_send_is_refused(tmp_path: Path) -> None:
    missing = organism("run", HELLO, "--file", str(tmp_path / "nope.xml"))
    assert missing.returncode == 2 and "nope.xml" in missing.stderr
    assert "Traceback" not in missing.stderr
    both = organism("run", HELLO, "--file", "-", "--to", "greeter", "--send", "<x/>")
    assert both.returncode == 2 and "--send and --file do not go together" in both.stderr


def test_trace_prints_each_conversations_hop_tree_on_stderr_after_its_answer() -> None:
    done = organism("run", HELLO, "--trace", stdin=f"{envelope('Ada')}\n{envelope('Bob')}\n")
    assert done.returncode == 0, done.stderr
    assert set(answers(done.stdout)) == {1, 2}, "stdout holds answers only"
    threads = dict(re.findall(r"line (\d+): .*?<thread>(\w+)</thread>", done.stdout))
    ms = r"[\d.]+ m?s"
    for line, thread in threads.items():
        tree = re.search(  # as org.trace and `organism trace` draw it
            rf"^trace of line {line}: conversation {thread} at greeter: answered in {ms} "
            rf"\(2 hops\)\n"
            rf"greeter <Greeting> \+{ms} {ms} ok\n"
            rf"└── shouter <Shout> \+{ms} {ms} ok\n",
            done.stderr,
            re.MULTILINE,
        )
        assert tree, done.stderr
    greeting = "<Greeting><name>x</name></Greeting>"
    send = organism("run", HELLO, "--trace", "--to", "greeter", "--send", greeting)
    assert send.stdout == "<Reply><message>HELLO, X!</message></Reply>\n"
    assert re.search(
        r"^trace of --send: conversation \w+ at greeter: answered in .* \(2 hops\)$",
        send.stderr,
        re.M,
    )


def test_debug_logs_one_line_per_hop_and_info_logs_none() -> None:
    done = organism("--log-level", "Debug", "run", HELLO, stdin=envelope("Ada") + "\n")
    assert done.returncode == 0, done.stderr
    hops = [t for t in done.stderr.splitlines() if t.startswith("DEBUG xml_pipeline.hops: ")]
    conv = r"conv [0-9a-f]{8}"
    expected = [  # as each finishes: the greeter awaits the shouter with meta.call
        rf"hop shouter -> greeter <Shout> {conv} - answered",
        rf"hop greeter -> shouter <Shout> {conv} [\d.]+ m?s ok",
        rf"hop _external -> greeter <Greeting> {conv} [\d.]+ m?s ok",
    ]
    assert len(hops) == 3, done.stderr
    for text, pattern in zip(hops, expected, strict=True):
        assert re.fullmatch("DEBUG xml_pipeline.hops: " + pattern, text), text
    quiet = organism("run", HELLO, stdin=envelope("Ada") + "\n")
    assert "xml_pipeline.hops" not in quiet.stderr


def test_version_names_the_command_and_the_package() -> None:
    done = organism("--version")
    assert done.returncode == 0
    assert re.fullmatch(r"organism \d+\.\d+\.\d+\S* \(xml-pipeline\)\n", done.stdout)


def test_validate_warns_about_a_cpu_bound_handler_calling_meta_call_and_still_passes() -> None:
    done = organism("validate", str(CPU_META_CALL))
    assert done.returncode == 0, done.stderr
    assert "ok (3 listeners: desk, cruncher, helper)" in done.stdout
    (warning,) = [t for t in done.stderr.splitlines() if t.startswith("warning: ")]
    handlers = CPU_META_CALL.parent / "cfgfix_cpu_meta_call.py"
    line = handlers.read_text().splitlines().index('        helped = await md.call("helper", msg)')
    assert f"{CPU_META_CALL}:11: listeners[1].handler: listener 'cruncher' is cpu_bound" in warning
    assert f"calls md.call(...) at {handlers}:{line + 1}" in warning
    assert "cannot await a peer" in warning and "HandlerResponse(payload, to=peer)" in warning
    assert "warning" not in organism("validate", HELLO).stderr


# -- end of input and Ctrl-C with answers pending -----------------------------------------------

NAPPER = """\
import sys
from dataclasses import dataclass

import anyio

from xml_pipeline import HandlerMetadata, HandlerResponse, payload


@payload
@dataclass
class Nap:
    seconds: float
    name: str = ""


async def nap(msg: Nap, meta: HandlerMetadata) -> HandlerResponse:
    print(f"napping {msg.name}", file=sys.stderr, flush=True)
    await anyio.sleep(msg.seconds)
    return HandlerResponse.respond(msg)
"""


def napper(folder: Path) -> str:
    """An organism whose one listener sleeps as long as it is asked, saying when it starts."""
    (folder / "napper.py").write_text(NAPPER)
    (folder / "organism.yaml").write_text(
        "organism:\n  name: napper\nlisteners:\n  - name: napper\n"
        "    payload_class: napper.Nap\n    handler: napper.nap\n    timeout_seconds: 120\n"
    )
    return str(folder / "organism.yaml")


def nap(seconds: float, name: str) -> str:
    return (
        f'<message xmlns="{NS}"><meta><to>napper</to></meta><Nap xmlns="">'
        f"<seconds>{seconds}</seconds><name>{name}</name></Nap></message>\n"
    )


def test_end_of_input_waits_for_the_answers_still_pending(tmp_path: Path) -> None:
    done = organism("run", napper(tmp_path), stdin=nap(0.5, "a") + nap(0.3, "b") + nap(0, "c"))
    assert done.returncode == 0, done.stderr
    tags = [int(t.split(":")[0].removeprefix("line ")) for t in done.stdout.splitlines()]
    assert sorted(tags) == [1, 2, 3]
    assert "end of input; answers still pending: " in done.stderr
    assert "done: 3 answered, 0 failed" in done.stderr


class Running:
    """``organism run`` in a subprocess whose stdin stays open; its stderr read as it comes."""

    def __init__(self, *args: str) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "xml_pipeline", *args],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.stderr: list[str] = []
        self._seen = threading.Condition()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stderr is not None
        for line in self.process.stderr:
            with self._seen:
                self.stderr.append(line)
                self._seen.notify_all()

    def write(self, text: str) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(text)
        self.process.stdin.flush()

    def wait_for(self, text: str, timeout: float = 60) -> None:
        with self._seen:
            found = self._seen.wait_for(lambda: any(text in t for t in self.stderr), timeout)
        assert found, f"{text!r} never came on stderr:\n{''.join(self.stderr)}"

    def finish(self) -> tuple[int, str, str]:
        """Wait for the exit (stdin still open); returns status, stdout, stderr."""
        assert self.process.stdout is not None
        stdout = self.process.stdout.read()
        status = self.process.wait(timeout=60)
        self._reader.join(timeout=10)
        with self._seen:
            return status, stdout, "".join(self.stderr)

    def kill(self) -> None:
        """Stop it if it still runs, and close the pipes."""
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait()
        self._reader.join(timeout=10)  # stderr reaches its end once the process is gone
        for pipe in (self.process.stdin, self.process.stdout, self.process.stderr):
            if pipe is not None:
                pipe.close()


def test_a_first_ctrl_c_stops_reading_and_waits_for_pending_answers(tmp_path: Path) -> None:
    running = Running("run", napper(tmp_path))
    try:
        running.write(nap(1.0, "slow"))
        running.wait_for("napping slow")
        running.process.send_signal(signal.SIGINT)
        status, stdout, stderr = running.finish()
    finally:
        running.kill()
    assert status == 130, stderr
    assert stdout.startswith("line 1: <message ") and "<name>slow</name>" in stdout
    assert "SIGINT: stopping: no more input is read; the 1 pending answers get up to 10s" in stderr
    summary = "stopped by SIGINT after reading 1 lines: 1 answered, 0 failed; 0 conversations"
    assert summary in stderr
    # stdin is still open: a reader blocked on it must neither hold up nor abort the exit
    assert "Traceback" not in stderr and "Fatal Python error" not in stderr


def test_a_second_signal_gives_up_on_pending_answers(tmp_path: Path) -> None:
    running = Running("run", napper(tmp_path))
    try:
        running.write(nap(0, "quick") + nap(600, "forever"))
        running.wait_for("napping forever")
        running.process.send_signal(signal.SIGINT)
        running.wait_for("the 1 pending answers get up to")
        running.process.send_signal(signal.SIGTERM)
        status, stdout, stderr = running.finish()
    finally:
        running.kill()
    assert status == 130, stderr
    assert stdout.startswith("line 1: <message ") and len(stdout.splitlines()) == 1
    assert "SIGTERM again: giving up on 1 pending answers" in stderr
    assert "line 2: failed [cancelled] given up on (SIGINT, then SIGTERM)" in stderr
    assert "stopped by SIGINT after reading 2 lines: 1 answered, 1 failed (cancelled 1)" in stderr
    assert "Traceback" not in stderr and "Fatal Python error" not in stderr


def test_run_prints_a_recovery_summary_at_exit_for_listeners_that_retried(tmp_path: Path) -> None:
    (tmp_path / "handlers.py").write_text(
        "from dataclasses import dataclass\n"
        "from xml_pipeline import HandlerResponse, payload\n\n\n"
        "@payload\n@dataclass\nclass Ask:\n    n: int\n\n\n"
        "async def flaky(msg, meta):\n"
        "    if meta.attempt == 1:\n"
        "        raise ConnectionError('the first try fails')\n"
        "    return HandlerResponse.respond(msg)\n"
    )
    (tmp_path / "organism.yaml").write_text(
        "organism:\n  name: rec\nlisteners:\n"
        "  - name: flaky\n    payload_class: handlers.Ask\n    handler: handlers.flaky\n"
        "    retry: {attempts: 2, backoff: {initial_seconds: 0}}\n"
        "  - name: steady\n    payload_class: handlers.Ask\n    handler: handlers.flaky\n"
    )
    done = organism(
        "run", str(tmp_path / "organism.yaml"),
        stdin="@flaky <Ask><n>1</n></Ask>\n@flaky <Ask><n>2</n></Ask>\n",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "recovery of 'flaky': 2 retries (2 recovered, 0 exhausted)" in done.stderr
    assert "recovery of 'steady'" not in done.stderr


def test_help_is_for_users_and_every_command_has_a_description_and_a_readme_line() -> None:
    """``organism --help`` shows no RST markup or notes for developers; ``organism CMD --help``
    says in a line what CMD does; the README's overview lists every command with its flags."""
    top = organism("--help")
    assert top.returncode == 0
    assert "``" not in top.stdout and "Thin" not in top.stdout and "public API" not in top.stdout
    commands = re.search(r"\{(run,[a-z,]+)\}", top.stdout)
    assert commands, top.stdout
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    overview = readme.split("## The `organism` command", 1)[1].split("```", 2)[1]
    nested = {"dlq": ["list", "show", "replay", "purge"]}
    for command in commands[1].split(","):
        for path in [[command]] + [[command, n] for n in nested.get(command, [])]:
            done = organism(*path, "--help")
            assert done.returncode == 0, path
            description = done.stdout.split("\n\n")[1]
            assert not description.startswith(("positional", "options")), (path, done.stdout)
            assert "``" not in done.stdout, path
        assert f"organism {command} " in overview, command
    for flags in ("--count N", "--interval S", "--follow", "CONVERSATION_ID --control URL"):
        assert flags in overview, flags
    assert "`--json`" in readme.split("## The `organism` command", 1)[1].split("##", 1)[0]


GC_HANDLERS = """
import gc
from dataclasses import dataclass

from xml_pipeline import HandlerMetadata, HandlerResponse, payload


@payload
@dataclass
class Ask:
    what: str


@payload
@dataclass
class Threshold:
    first: int


async def threshold(msg: Ask, meta: HandlerMetadata) -> HandlerResponse:
    return HandlerResponse.respond(Threshold(first=gc.get_threshold()[0]))
"""


def test_run_sets_the_cyclic_gc_threshold_of_its_process_and_refuses_a_bad_one(
    tmp_path: Path,
) -> None:
    (tmp_path / "handlers.py").write_text(GC_HANDLERS)
    (tmp_path / "organism.yaml").write_text(
        "organism:\n  name: gc\nlisteners:\n  - name: probe\n    payload_class: handlers.Ask\n"
        "    handler: handlers.threshold\n    description: reports the GC threshold\n"
    )
    file = str(tmp_path / "organism.yaml")
    ask = ["--to", "probe", "--send", "<Ask><what>gc</what></Ask>"]
    default = organism("run", file, *ask)
    assert default.returncode == 0, default.stderr
    assert default.stdout.strip() == "<Threshold><first>10000</first></Threshold>"
    chosen = organism("run", file, "--gc-threshold", "700", *ask)
    assert chosen.stdout.strip() == "<Threshold><first>700</first></Threshold>", chosen.stderr
    for bad in ("0", "-5", "many", "1.5", "2147483648"):  # 2**31: past a C int
        refused = organism("run", file, "--gc-threshold", bad, *ask)
        assert refused.returncode == 2
        assert "--gc-threshold: expected a whole number" in refused.stderr
        assert f"got '{bad}'" in refused.stderr
