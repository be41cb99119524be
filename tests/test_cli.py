"""The `organism` command, run for real as `python -m xml_pipeline`."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import jsonschema

HELLO = str(Path(__file__).resolve().parents[1] / "organisms" / "hello" / "organism.yaml")


def organism(*args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "xml_pipeline", *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


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
    envelope = (
        '<message xmlns="https://xml-pipeline.org/ns/envelope/v1"><meta><to>greeter</to></meta>'
        '<Greeting xmlns=""><name>Cy</name></Greeting></message>'
    )
    lines = ["@greeter <Greeting><name>Bob</name></Greeting>", envelope, "@nobody <X/>", ""]
    done = organism("--log-level", "WARNING", "run", HELLO, stdin="\n".join(lines))
    assert done.returncode == 1
    assert sorted(done.stdout.split()) == [
        "<Reply><message>HELLO,",
        "<Reply><message>HELLO,",
        "BOB!</message></Reply>",
        "CY!</message></Reply>",
    ]
    assert "stdin line 3" in done.stderr and "no_route" in done.stderr
    assert "INFO" not in done.stderr


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
