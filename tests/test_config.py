"""organism.yaml -> OrganismConfig: values, defaults, and every problem with key path and line."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from textwrap import dedent, indent

import pytest

from xml_pipeline._config import (
    BackendConfig,
    DeadLetterConfig,
    ListenerConfig,
    OrganismConfig,
    ProcessPoolConfig,
    load_config,
    parse_config,
)
from xml_pipeline._errors import ConfigError, ConfigProblem

FIXTURES = Path(__file__).parent / "fixtures" / "config"

MINIMAL = """\
organism:
  name: hello
listeners:
  - name: greeter
    payload_class: handlers.Greeting
    handler: handlers.greet
"""


def parse(text: str) -> OrganismConfig:
    return parse_config(dedent(text), file="organism.yaml")


def problems(text: str) -> list[tuple[str, int | None]]:
    """The (key path, line) of every problem found in ``text``."""
    return [(p.key_path, p.line) for p in all_problems(text)]


def all_problems(text: str) -> list[ConfigProblem]:
    with pytest.raises(ConfigError) as info:
        parse(text)
    assert all(p.file == "organism.yaml" for p in info.value.problems)
    return info.value.problems


def only_problem(text: str) -> ConfigProblem:
    found = all_problems(text)
    assert len(found) == 1, found
    return found[0]


def with_listener(extra: str) -> str:
    """MINIMAL with ``extra`` lines added to its listener (from line 7 on)."""
    return MINIMAL + indent(dedent(extra).strip("\n") + "\n", "    ")


def entry(name: str, **extra: str) -> str:
    """One more listener entry for the end of MINIMAL (3 lines, plus one per extra key)."""
    lines = [f"  - name: {name}", "    payload_class: handlers.Payload", "    handler: handlers.h"]
    return "\n".join(lines + [f"    {key}: {value}" for key, value in extra.items()]) + "\n"


# -- valid files -----------------------------------------------------------------------------


def test_full_file_with_every_key_becomes_typed_config() -> None:
    config = load_config(FIXTURES / "full.yaml")
    assert config.file == (FIXTURES / "full.yaml").absolute()
    assert config.folder == FIXTURES.absolute()
    assert (config.name, config.description) == ("hello", "Greets people loudly")
    assert config.drain_timeout_seconds == 2.5
    assert (config.max_message_bytes, config.ingress_limit) == (65536, 32)
    assert config.ingress_wait_seconds == 0.0
    assert config.listeners[0] == ListenerConfig(
        name="greeter",
        payload_class="handlers.Greeting",
        handler="handlers.greet",
        description="Greets people",
        peers=("shouter", "shop.orders"),
        max_concurrency=4,
        timeout_seconds=12.0,
        cpu_bound=True,
        handles_errors=True,
        line=10,
        key_path="listeners[0]",
        payload_class_line=11,
        handler_line=12,
    )
    assert [listener.name for listener in config.listeners] == ["greeter", "shouter", "shop.orders"]
    assert config.backend == BackendConfig(
        type="redis",
        redis_url="rediss://cache.example:6380/2",
        redis_prefix="hello:",
        redis_max_connections=8,
        thread_ttl_seconds=60.0,
        history_max_entries=20,
        manager_address="127.0.0.1:50000",
        manager_authkey="secret",
    )
    assert config.backend.manager_host_port == ("127.0.0.1", 50000)
    assert config.process_pool == ProcessPoolConfig(
        workers=3, max_tasks_per_child=500, max_crashes=5
    )
    assert config.dead_letters.max_entries == 50


def test_omitted_keys_take_their_documented_defaults() -> None:
    config = parse(MINIMAL)
    assert config.description == ""
    assert config.drain_timeout_seconds == 10.0
    assert config.max_message_bytes == 262144
    assert config.ingress_limit == 1024
    assert config.ingress_wait_seconds == 5.0
    listener = config.listeners[0]
    assert listener.description == ""
    assert listener.peers == ()
    assert listener.max_concurrency == 16
    assert listener.timeout_seconds == 30.0
    assert listener.cpu_bound is False
    assert listener.handles_errors is False
    assert config.backend == BackendConfig()
    assert config.backend.type == "memory"
    assert config.backend.redis_url == "redis://127.0.0.1:6379/0"
    assert config.backend.redis_prefix == "xp:"
    assert config.backend.redis_max_connections == 64
    assert config.backend.thread_ttl_seconds == 3600.0
    assert config.backend.history_max_entries == 100
    assert config.backend.manager_address is None
    assert config.backend.manager_authkey is None
    assert config.backend.manager_host_port is None
    assert config.process_pool.workers == (os.cpu_count() or 1)
    assert config.process_pool.max_tasks_per_child is None
    assert config.process_pool.max_crashes == 2
    assert config.dead_letters.max_entries == 100_000


def test_empty_optional_sections_mean_all_defaults() -> None:
    config = parse(MINIMAL + "backend:\nprocess_pool:\ndead_letters:\n")
    assert config.backend == BackendConfig()
    assert config.process_pool == ProcessPoolConfig()
    assert config.dead_letters == DeadLetterConfig()


def test_ints_are_accepted_where_floats_are_expected() -> None:
    config = parse(with_listener("timeout_seconds: 3"))
    assert config.listeners[0].timeout_seconds == 3.0
    assert isinstance(config.listeners[0].timeout_seconds, float)


def test_config_objects_are_frozen() -> None:
    config = parse(MINIMAL)
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.name = "other"  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.listeners[0].peers = ("x",)  # type: ignore[misc]


def test_listener_records_its_key_path_and_lines() -> None:
    listener = parse(MINIMAL).listeners[0]
    assert (listener.key_path, listener.line) == ("listeners[0]", 4)
    assert (listener.payload_class_line, listener.handler_line) == (5, 6)


def test_dotted_listener_names_are_allowed_and_can_be_peers() -> None:
    config = parse(with_listener("peers: [billing.invoices]") + entry("billing.invoices"))
    assert config.listeners[0].peers == ("billing.invoices",)
    assert config.listener("billing.invoices").name == "billing.invoices"


def test_listener_lookup_by_unknown_name_suggests_a_close_one() -> None:
    config = parse(MINIMAL)
    assert config.listener("greeter") is config.listeners[0]
    with pytest.raises(KeyError, match="did you mean 'greeter'"):
        config.listener("greeterr")


def test_yaml_merge_keys_can_share_listener_settings() -> None:
    config = parse(
        MINIMAL
        + "  - &slow\n"
        + "    name: first\n"
        + "    payload_class: handlers.A\n"
        + "    handler: handlers.a\n"
        + "    timeout_seconds: 300\n"
        + "  - <<: *slow\n"
        + "    name: second\n"
    )
    assert config.listener("second").timeout_seconds == 300.0
    assert config.listener("second").handler == "handlers.a"


def test_redis_settings_are_accepted_with_another_backend_type() -> None:
    config = parse(MINIMAL + "backend:\n  type: memory\n  redis_url: redis://other:6379/1\n")
    assert config.backend.type == "memory"
    assert config.backend.redis_url == "redis://other:6379/1"


def test_manager_authkey_is_hidden_from_repr() -> None:
    backend = BackendConfig(manager_address="h:1", manager_authkey="hunter2")
    assert "hunter2" not in repr(backend)


# -- problems: where and what ---------------------------------------------------------------


def test_unknown_key_is_rejected_with_did_you_mean() -> None:
    problem = only_problem(with_listener("peer: [greeter]"))
    assert (problem.key_path, problem.line) == ("listeners[0].peer", 7)
    assert problem.message == "unknown key; did you mean 'peers'?"
    assert str(problem) == "organism.yaml:7: listeners[0].peer: unknown key; did you mean 'peers'?"


def test_unknown_key_without_a_close_match_lists_the_allowed_keys() -> None:
    problem = only_problem(MINIMAL + "process_pool:\n  zzz: 1\n")
    assert (problem.key_path, problem.line) == ("process_pool.zzz", 8)
    assert "workers, max_tasks_per_child, max_crashes" in problem.message


def test_key_from_another_section_says_where_it_belongs() -> None:
    problem = only_problem(MINIMAL.replace("  name: hello\n", "  name: hello\n  redis_url: x\n"))
    assert (problem.key_path, problem.line) == ("organism.redis_url", 3)
    assert "belongs under 'backend:'" in problem.message


def test_missing_required_keys_are_reported_at_their_mapping() -> None:
    text = MINIMAL.replace("    handler: handlers.greet\n", "")
    assert problems(text) == [("listeners[0].handler", 4)]
    assert problems("organism:\n  description: x\n") == [("listeners", 1), ("organism.name", 2)]


@pytest.mark.parametrize(
    ("line", "key_path", "expected", "found"),
    [
        ("max_concurrency: many", "listeners[0].max_concurrency", "an integer", "text 'many'"),
        ("max_concurrency: true", "listeners[0].max_concurrency", "an integer", "boolean true"),
        ("max_concurrency: 2.5", "listeners[0].max_concurrency", "an integer", "number 2.5"),
        ("timeout_seconds: soon", "listeners[0].timeout_seconds", "a number", "text 'soon'"),
        ("timeout_seconds: false", "listeners[0].timeout_seconds", "a number", "boolean false"),
        ("cpu_bound: 'no'", "listeners[0].cpu_bound", "true or false", "text 'no'"),
        ("description: [a, b]", "listeners[0].description", "text", "a list"),
        ("peers: greeter", "listeners[0].peers", "a list", "text 'greeter'"),
        ("peers: [7]", "listeners[0].peers[0]", "text", "integer 7"),
        ("handles_errors:", "listeners[0].handles_errors", "true or false", "empty value"),
    ],
)
def test_wrong_type_says_what_was_expected_and_what_was_found(
    line: str, key_path: str, expected: str, found: str
) -> None:
    problem = only_problem(with_listener(line))
    assert (problem.key_path, problem.line) == (key_path, 7)
    assert f"expected {expected}" in problem.message
    assert found in problem.message


def test_required_key_left_empty_asks_for_a_value() -> None:
    problem = only_problem(MINIMAL.replace("handler: handlers.greet", "handler:"))
    assert (problem.key_path, problem.line) == ("listeners[0].handler", 6)
    assert problem.message == "expected text, found an empty value (null); give a value"


def test_number_where_text_is_expected_suggests_quotes() -> None:
    problem = only_problem(MINIMAL.replace("name: hello", "name: 1234"))
    assert (problem.key_path, problem.line) == ("organism.name", 2)
    assert "put it in quotes" in problem.message


@pytest.mark.parametrize(
    ("section", "key", "value", "message"),
    [
        ("organism", "drain_timeout_seconds", "0", "greater than 0"),
        ("organism", "max_message_bytes", "0", "at least 1"),
        ("organism", "ingress_limit", "-5", "at least 1"),
        ("organism", "ingress_wait_seconds", "-1", "0 or more"),
        ("backend", "redis_max_connections", "0", "at least 1"),
        ("backend", "thread_ttl_seconds", ".inf", "finite"),
        ("backend", "history_max_entries", "0", "at least 1"),
        ("process_pool", "workers", "0", "at least 1"),
        ("process_pool", "max_tasks_per_child", "0", "at least 1"),
        ("process_pool", "max_crashes", "0", "at least 1"),
        ("dead_letters", "max_entries", "0", "at least 1"),
    ],
)
def test_out_of_range_values_are_rejected(section: str, key: str, value: str, message: str) -> None:
    text = MINIMAL if section == "organism" else MINIMAL + f"{section}:\n"
    text = text.replace(f"{section}:\n", f"{section}:\n  {key}: {value}\n")
    problem = only_problem(text)
    assert problem.key_path == f"{section}.{key}"
    assert problem.line == text.splitlines().index(f"  {key}: {value}") + 1
    assert message in problem.message


def test_ingress_wait_may_be_zero() -> None:
    config = parse(MINIMAL.replace("  name: hello\n", "  name: hello\n  ingress_wait_seconds: 0\n"))
    assert config.ingress_wait_seconds == 0.0


def test_listener_timeout_must_be_positive() -> None:
    problem = only_problem(with_listener("timeout_seconds: 0"))
    assert (problem.key_path, problem.line) == ("listeners[0].timeout_seconds", 7)
    assert "greater than 0" in problem.message


def test_several_problems_are_reported_at_once_in_line_order() -> None:
    text = """\
        organism:
          name: hello
          drain_timout_seconds: 1
        listeners:
          - name: greeter
            payload_class: Greeting
            handler: handlers.greet
            max_concurrency: 0
        backend:
          type: reddis
        """
    assert problems(text) == [
        ("organism.drain_timout_seconds", 3),
        ("listeners[0].payload_class", 6),
        ("listeners[0].max_concurrency", 8),
        ("backend.type", 10),
    ]
    with pytest.raises(ConfigError, match="4 problems") as info:
        parse(text)
    assert "did you mean 'redis'?" in str(info.value)
    assert info.value.reason == "config"


def test_yaml_syntax_error_is_a_config_error_with_its_line() -> None:
    problem = only_problem("organism:\n  name: hello\nlisteners:\n  - name: [greeter\n")
    assert problem.line == 5
    assert problem.message.startswith("YAML syntax error")


def test_tab_indentation_is_reported_at_its_line() -> None:
    problem = only_problem("organism:\n  name: hello\n\tdescription: x\n")
    assert problem.line == 3
    assert "'\\t'" in problem.message


def test_empty_file_says_what_it_needs() -> None:
    problem = only_problem("# nothing yet\n")
    assert "'organism:'" in problem.message
    assert "'listeners:'" in problem.message


def test_document_that_is_not_a_mapping_is_rejected() -> None:
    problem = only_problem("- one\n- two\n")
    assert (problem.key_path, problem.line) == ("(document)", 1)
    assert "found a list" in problem.message


def test_unreadable_file_is_a_config_error(tmp_path: Path) -> None:
    missing = tmp_path / "nope.yaml"
    with pytest.raises(ConfigError, match="cannot read") as info:
        load_config(missing)
    assert info.value.problems[0].file == str(missing)


def test_file_that_is_not_utf8_is_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / "organism.yaml"
    path.write_bytes(b"organism:\n  name: caf\xe9\n")
    with pytest.raises(ConfigError, match="UTF-8"):
        load_config(path)


def test_listeners_must_be_a_non_empty_list() -> None:
    assert problems("organism:\n  name: x\nlisteners: []\n") == [("listeners", 3)]
    assert problems("organism:\n  name: x\nlisteners:\n  name: a\n") == [("listeners", 4)]


def test_peers_must_name_declared_listeners() -> None:
    problem = only_problem(with_listener("peers: [greter]"))
    assert (problem.key_path, problem.line) == ("listeners[0].peers[0]", 7)
    assert "no listener named 'greter'" in problem.message


def test_unknown_peer_gets_a_did_you_mean() -> None:
    text = with_listener("peers: [shoutr]") + entry("shouter")
    problem = only_problem(text)
    assert problem.key_path == "listeners[0].peers[0]"
    assert "did you mean 'shouter'?" in problem.message


def test_peers_must_not_repeat_or_name_the_listener_itself() -> None:
    text = with_listener("peers:\n  - greeter\n  - other\n  - other") + entry("other")
    assert problems(text) == [("listeners[0].peers[0]", 8), ("listeners[0].peers[2]", 10)]


def test_duplicate_listener_names_are_rejected_at_the_second() -> None:
    text = MINIMAL + MINIMAL.split("listeners:\n")[1]
    problem = only_problem(text)
    assert (problem.key_path, problem.line) == ("listeners[1].name", 7)
    assert "already used by listeners[0] (line 4)" in problem.message


def test_duplicate_keys_in_one_mapping_are_rejected() -> None:
    problem = only_problem(with_listener("handler: handlers.other"))
    assert (problem.key_path, problem.line) == ("listeners[0].handler", 7)
    assert "twice" in problem.message


@pytest.mark.parametrize("name", ["_pump", "two words", "''"])
def test_reserved_blank_or_spaced_listener_names_are_rejected(name: str) -> None:
    problem = only_problem(MINIMAL.replace("name: greeter", f"name: {name}"))
    assert (problem.key_path, problem.line) == ("listeners[0].name", 4)


@pytest.mark.parametrize("value", ["Greeting", "handlers.", "handlers.class", "1handlers.X"])
def test_payload_class_must_be_a_dotted_module_path(value: str) -> None:
    problem = only_problem(MINIMAL.replace("handlers.Greeting", value))
    assert (problem.key_path, problem.line) == ("listeners[0].payload_class", 5)
    assert "dotted path" in problem.message


def test_unknown_backend_type_is_rejected() -> None:
    problem = only_problem(MINIMAL + "backend:\n  type: postgres\n")
    assert (problem.key_path, problem.line) == ("backend.type", 8)
    assert "use memory, manager or redis" in problem.message


def test_redis_url_must_use_a_redis_scheme() -> None:
    problem = only_problem(MINIMAL + "backend:\n  type: redis\n  redis_url: http://cache\n")
    assert (problem.key_path, problem.line) == ("backend.redis_url", 9)
    assert "redis://" in problem.message


def test_redis_prefix_must_not_be_empty() -> None:
    assert problems(MINIMAL + "backend:\n  redis_prefix: ''\n") == [("backend.redis_prefix", 8)]


def test_manager_address_requires_an_authkey() -> None:
    problem = only_problem(MINIMAL + "backend:\n  type: manager\n  manager_address: h:50000\n")
    assert (problem.key_path, problem.line) == ("backend.manager_authkey", 8)
    assert "required when manager_address is given" in problem.message


@pytest.mark.parametrize("address", ["localhost", "h:port", ":5000", "h:70000"])
def test_manager_address_must_be_host_and_port(address: str) -> None:
    text = MINIMAL + f"backend:\n  manager_address: '{address}'\n"
    assert problems(text) == [("backend.manager_address", 8)]


def test_problem_for_a_whole_section_points_at_it() -> None:
    assert problems(MINIMAL + "backend: [redis]\n") == [("backend", 7)]


RECOVERY = (
    MINIMAL
    + """\
    retry:
      attempts: 4
      backoff: {initial_seconds: 0.2, max_seconds: 10, multiplier: 2, jitter: equal}
      on: [handler_error, timeout]
      never: [builtins.ValueError]
    circuit: {failures: 5, reset_seconds: 30}
    compensate: handlers.undo
"""
)


def test_recovery_sections_are_read_into_their_settings() -> None:
    from xml_pipeline import BackoffSettings, CircuitSettings, RetrySettings

    [listener] = parse(RECOVERY).listeners
    assert listener.retry == RetrySettings(
        attempts=4,
        backoff=BackoffSettings(initial_seconds=0.2, max_seconds=10, multiplier=2, jitter="equal"),
        on=("handler_error", "timeout"),
        never=("builtins.ValueError",),
    )
    assert listener.circuit == CircuitSettings(failures=5, reset_seconds=30)
    assert listener.compensate == "handlers.undo"
    assert parse(MINIMAL).listeners[0].retry is None


def test_a_bare_on_key_stays_the_key_on_not_yaml_1_1s_true() -> None:
    [listener] = parse(MINIMAL + "    retry: {on: [timeout]}\n").listeners
    assert listener.retry is not None and listener.retry.on == ("timeout",)


@pytest.mark.parametrize(
    ("fragment", "where", "words"),
    [
        ("retry: {attempts: 0}", "listeners[0].retry.attempts", "must be at least 1"),
        ("retry: {backoff: {initial_seconds: -1}}", "retry.backoff.initial_seconds", "0 or more"),
        ("retry: {backoff: {max_seconds: 0.01}}", "retry.backoff.max_seconds", "initial_seconds"),
        ("retry: {backoff: {jitter: fulll}}", "retry.backoff.jitter", "did you mean 'full'"),
        ("retry: {on: [handler_eror]}", "retry.on", "did you mean 'handler_error'"),
        ("retry: {never: [ValueError]}", "retry.never", "module.Class"),
        ("retry: {attemps: 3}", "retry.attemps", "did you mean 'attempts'"),
        ("retry: 3", "listeners[0].retry", "expected a mapping"),
        ("circuit: {failures: 0}", "circuit.failures", "must be at least 1"),
        ("circuit: {reset_seconds: 0}", "circuit.reset_seconds", "greater than 0"),
        ("compensate: undo", "listeners[0].compensate", "dotted path"),
    ],
)
def test_bad_recovery_policies_are_reported_with_key_path_and_line(
    fragment: str, where: str, words: str
) -> None:
    problem = only_problem(MINIMAL + f"    {fragment}\n")
    assert where in problem.key_path and words in problem.message
    assert problem.line == 7
