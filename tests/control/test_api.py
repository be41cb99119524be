"""The control plane's HTTP API: a real server on a free port, called with a real client."""

from __future__ import annotations

import asyncio
import contextlib
import socket

import anyio
import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.control.conftest import SLOW, TOKEN, client_of, job
from xml_pipeline import ControlConfig, DeliveryError, Organism, UsageError
from xml_pipeline.backends.manager import ManagerBackend, start_manager_server
from xml_pipeline.backends.memory import MemoryBackend
from xml_pipeline.backends.redis import RedisBackend
from xml_pipeline.metrics.records import STATS_METRICS

pytestmark = pytest.mark.anyio


async def wait_for_run(client: httpx.AsyncClient, listener: str) -> dict[str, object]:
    """The first run of ``listener`` listed as running (polled: it starts in a task)."""
    with anyio.fail_after(10):
        while True:
            runs = (await client.get("/api/runs", params={"listener": listener})).json()["runs"]
            running = [r for r in runs if r["status"] == "running"]
            if running:
                return running[0]  # type: ignore[no-any-return]
            await anyio.sleep(0.01)


# -- auth --------------------------------------------------------------------------------------


@pytest.mark.parametrize("header", [None, "Bearer wrong", f"Bearer {TOKEN}x", TOKEN, "Basic x"])
async def test_a_missing_or_wrong_token_gets_401_and_nothing_else(
    slow: Organism, header: str | None
) -> None:
    headers = {} if header is None else {"Authorization": header}
    async with client_of(slow, token=None) as client:
        for method, path in [
            ("GET", "/api/runs"), ("GET", "/api/stats"), ("GET", "/api/runs/r1"),
            ("POST", "/api/runs/r1/cancel"), ("GET", "/api/events"), ("GET", "/metrics"),
            ("GET", "/api/nothing-here"),
        ]:  # fmt: skip
            response = await client.request(method, path, headers=headers)
            assert response.status_code == 401, path
            assert response.content == b'{"error": "unauthorized"}', path


async def test_the_right_token_is_served_and_the_console_shell_needs_none(slow: Organism) -> None:
    async with client_of(slow) as client:
        assert (await client.get("/api/runs")).json() == {"runs": []}
    async with client_of(slow, token=None) as anonymous:
        page = await anonymous.get("/")
        assert page.status_code == 200 and "<html" in page.text
        assert (await anonymous.get("/api/runs")).status_code == 401


async def test_listening_beyond_loopback_without_a_token_is_refused_at_start(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("XP_CONTROL_TOKEN", raising=False)
    org = Organism.from_yaml(SLOW, control={"listen": "0.0.0.0:0"})
    with pytest.raises(UsageError, match=r"beyond loopback and \$XP_CONTROL_TOKEN is not set"):
        async with org:
            pass
    monkeypatch.setenv("XP_CONTROL_TOKEN", TOKEN)  # with a token it starts
    async with org:
        assert org.control_url is not None


async def test_without_a_token_the_start_warns_that_the_control_plane_is_open(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.delenv("XP_CONTROL_TOKEN", raising=False)
    with caplog.at_level("INFO", logger="xml_pipeline.control"):
        async with Organism.from_yaml(SLOW) as org, client_of(org, token=None) as client:
            assert (await client.get("/api/runs")).status_code == 200  # open, as it warned
    [warning] = [r for r in caplog.records if r.levelname == "WARNING"]
    assert "has no token" in warning.getMessage()
    assert "set $XP_CONTROL_TOKEN to a secret token" in warning.getMessage()
    caplog.clear()
    monkeypatch.setenv("XP_CONTROL_TOKEN", TOKEN)
    with caplog.at_level("INFO", logger="xml_pipeline.control"):
        async with Organism.from_yaml(SLOW):
            pass
    assert not [r for r in caplog.records if r.levelname == "WARNING"]


async def test_a_port_in_use_fails_at_start_naming_the_port(token: str) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        org = Organism.from_yaml(SLOW, control=ControlConfig(listen=f"127.0.0.1:{port}"))
        with pytest.raises(
            UsageError, match=rf"cannot listen on 127\.0\.0\.1:{port} \(port {port}\)"
        ):
            async with org:
                pass
        assert org.control_url is None


# -- runs, cancel, 404, 409 --------------------------------------------------------------------


async def test_a_run_is_listed_with_its_output_and_cancelled_its_caller_answered_cancelled(
    slow: Organism,
) -> None:
    async with client_of(slow) as client, anyio.create_task_group() as group:
        failures: list[DeliveryError] = []

        async def ask() -> None:
            try:
                await slow.request("worker", job(slow, seconds=60.0, lines=3), timeout=30)
            except DeliveryError as exc:
                failures.append(exc)

        group.start_soon(ask)
        run = await wait_for_run(client, "worker")
        one = (await client.get(f"/api/runs/{run['run_id']}")).json()
        assert one["output"] == ["line 1 of 3", "line 2 of 3", "line 3 of 3"]
        assert one["progress"] == "wrote 3 lines"
        cancelled = await client.post(f"/api/runs/{run['run_id']}/cancel")
        assert cancelled.status_code == 202
        assert cancelled.json() == {"cancelled": run["run_id"]}
    assert [f.reason for f in failures] == ["cancelled"]
    async with client_of(slow) as client:
        again = await client.post(f"/api/runs/{run['run_id']}/cancel")
    assert again.status_code == 409
    assert again.json()["id"] == run["run_id"] and "finished" in again.json()["error"]


async def test_unknown_ids_get_404_with_the_id(slow: Organism) -> None:
    async with client_of(slow) as client:
        for method, path, id in [
            ("GET", "/api/runs/r999", "r999"),
            ("POST", "/api/runs/r999/cancel", "r999"),
            ("POST", "/api/conversations/nope/cancel", "nope"),
            ("GET", "/api/trace/nope", "nope"),
            ("POST", "/api/workers/12345/kill", "12345"),
        ]:
            response = await client.request(method, path)
            assert response.status_code == 404, path
            assert response.json()["id"] == id, path
            assert id in response.json()["error"], path


async def test_ids_are_taken_by_a_unique_prefix_an_ambiguous_one_lists_the_candidates(
    monkeypatch: pytest.MonkeyPatch, token: str
) -> None:
    """What `organism ps` and the console show (a conversation id cut to 12 characters, a run
    number) works wherever an id does; a prefix of several ids is refused naming them."""
    from xml_pipeline._runtime import pump, registry

    # every conversation id starts alike, so that an 8-digit prefix names them all
    monkeypatch.setattr(pump, "new_thread_id", lambda: "abcdef12" + registry.new_thread_id()[8:])
    async with (
        Organism.from_yaml(SLOW, tracing=True) as org,
        client_of(org) as client,
        anyio.create_task_group() as group,
    ):
        failures: list[str] = []

        async def ask() -> None:
            try:
                await org.request("boss", job(org, seconds=60.0, lines=1), timeout=30)
            except DeliveryError as exc:
                failures.append(exc.reason)

        await org.request("worker", job(org, seconds=0.0), timeout=10)
        group.start_soon(ask)
        run = await wait_for_run(client, "worker")
        conversation, run_id = str(run["conversation"]), str(run["run_id"])
        short = run_id.partition("@")[0]
        got = await client.get(f"/api/runs/{short}")
        assert got.status_code == 200 and got.json()["run_id"] == run_id
        prefix = await client.get(f"/api/runs/{run_id[:-2]}")
        assert prefix.status_code == 200 and prefix.json()["run_id"] == run_id
        traced = await client.get(f"/api/trace/{conversation[:12]}")
        assert traced.status_code == 200, traced.text
        assert traced.json()["conversation"] == conversation
        ambiguous = await client.get("/api/trace/abcdef12")
        assert ambiguous.status_code == 400
        body = ambiguous.json()
        assert conversation in body["candidates"] and len(body["candidates"]) == 2
        assert "'abcdef12' is the start of 2 conversation ids" in body["error"]
        too_short = await client.post(f"/api/conversations/{conversation[:7]}/cancel")
        assert too_short.status_code == 404
        cancelled = await client.post(f"/api/conversations/{conversation[:12]}/cancel")
        assert cancelled.status_code == 202
        assert cancelled.json() == {"cancelled": conversation}
    assert failures == ["cancelled"]


async def test_a_conversation_is_listed_and_cancelled(slow: Organism) -> None:
    async with client_of(slow) as client, anyio.create_task_group() as group:
        failures: list[str] = []

        async def ask() -> None:
            try:
                await slow.request("boss", job(slow, seconds=60.0), timeout=30)
            except DeliveryError as exc:
                failures.append(exc.reason)

        group.start_soon(ask)
        run = await wait_for_run(client, "worker")
        listed = (await client.get("/api/conversations")).json()["conversations"]
        assert [c["id"] for c in listed] == [run["conversation"]]
        assert listed[0]["started_by"] == "boss"
        response = await client.post(f"/api/conversations/{run['conversation']}/cancel")
        assert response.status_code == 202
    assert failures == ["cancelled"]


async def test_stats_and_graph(slow: Organism) -> None:
    await slow.request("boss", job(slow, seconds=0.0), timeout=10)
    async with client_of(slow) as client:
        stats = (await client.get("/api/stats")).json()
        graph = (await client.get("/api/graph")).json()
    assert stats["organism"]["answered"] == 1 and stats["organism"]["hops"] == slow.stats.hops
    assert stats["listeners"]["worker"]["hops"] == 1
    assert {"from": "boss", "to": "worker", "hops": 1} in stats["edges"]
    assert stats["events"]["dropped"] == 0
    assert [x["name"] for x in graph["listeners"]] == ["boss", "worker"]
    assert graph["edges"] == [{"from": "boss", "to": "worker"}]
    assert graph["mermaid"].startswith("flowchart LR")


async def test_graph_and_backend_description_name_the_backend_of_every_kind(
    slow: Organism,
) -> None:
    """A memory organism is not described as a manager server it never starts; each kind of
    backend (config or object) is named as what it is."""
    async with client_of(slow) as client:
        graph = (await client.get("/api/graph")).json()
    assert graph["backend"] == "the memory of this process" == slow.backend_description
    server = start_manager_server()
    try:
        kinds: list[tuple[object, str]] = [
            ({"type": "memory"}, "the memory of this process"),
            (MemoryBackend(), "the memory of this process"),
            ({"type": "manager"}, "the manager server this organism starts"),
            ({"type": "manager", "manager_address": "10.0.0.5:5000", "manager_authkey": "k"},
             "the manager server at 10.0.0.5:5000"),
            ({"type": "redis", "redis_url": "redis://:secret@db:6379/0", "redis_prefix": "p:"},
             "redis at db:6379/0, prefix 'p:'"),
            (RedisBackend("redis://db:6379/0", prefix="p:"), "RedisBackend("),
            (ManagerBackend(server.address, server.authkey, server=server),
             "the manager server this process started (ManagerBackend(address="),
            (ManagerBackend(("10.0.0.5", 5000), b"k"), "ManagerBackend(address=('10.0.0.5'"),
        ]  # fmt: skip
        for backend, expected in kinds:
            described = Organism.from_yaml(SLOW, backend=backend).backend_description
            assert described.startswith(expected), (backend, described)
            assert "secret" not in described
    finally:
        server.shutdown()


# -- the event stream --------------------------------------------------------------------------


async def events(client: httpx.AsyncClient, into: list[tuple[str, str]]) -> None:
    """Append ``(event, data)`` for each server-sent event until cancelled."""
    async with client.stream("GET", "/api/events") as response:
        assert response.status_code == 200
        assert response.headers["content-type"] == "text/event-stream"
        kind = ""
        async for line in response.aiter_lines():
            if line.startswith("event: "):
                kind = line.removeprefix("event: ")
            elif line.startswith("data: "):
                into.append((kind, line.removeprefix("data: ")))


async def wait_until(condition: object, seconds: float = 10) -> None:
    with anyio.fail_after(seconds):
        while not condition():  # type: ignore[operator]
            await anyio.sleep(0.01)


async def test_the_event_stream_carries_hops_and_run_changes(slow: Organism) -> None:
    import json

    got: list[tuple[str, str]] = []
    async with client_of(slow) as client, anyio.create_task_group() as group:
        group.start_soon(events, client, got)
        await wait_until(lambda: any(kind == "runs" for kind, _ in got))  # the first: now
        async with anyio.create_task_group() as asks:
            asks.start_soon(slow.request, "boss", job(slow, seconds=1.0))
            await wait_until(
                lambda: any(k == "runs" and '"worker"' in d for k, d in got), seconds=10.0
            )
        await wait_until(lambda: sum(k == "hop" for k, _ in got) == 2)
        group.cancel_scope.cancel()
    hops = [json.loads(d) for k, d in got if k == "hop"]
    assert [(h["listener"], h["caller"], h["outcome"]) for h in hops] == [
        ("worker", "boss", "ok"),
        ("boss", "_external", "ok"),
    ]
    assert {"conversation", "duration_seconds", "at"} <= set(hops[0])


async def test_a_client_that_stops_reading_is_dropped_and_the_pump_goes_on(token: str) -> None:
    """Count-based: a raw socket that never reads fills its queue, loses a queue's worth of
    events and is disconnected; meanwhile a reading client gets every hop and every request
    is answered."""
    buffer, batch = 500, 100  # a batch's events (two hops each) fit the reader's queue
    org = Organism.from_yaml(SLOW, control={"listen": "127.0.0.1:0", "client_buffer": buffer})
    async with org, client_of(org) as client, anyio.create_task_group() as group:
        url = httpx.URL(org.control_url or "")
        stalled = socket.socket()
        stalled.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        stalled.connect((url.host, url.port))
        stalled.sendall(
            f"GET /api/events HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\n\r\n".encode()
        )
        got: list[tuple[str, str]] = []
        group.start_soon(events, client, got)
        await wait_until_clients(client, 2)
        sent = 0
        with anyio.fail_after(100):
            while (await client.get("/api/stats")).json()["events"]["disconnected"] == 0:
                async with anyio.create_task_group() as asks:
                    for _ in range(batch):
                        asks.start_soon(org.request, "boss", job(org, seconds=0.0))
                sent += batch
                # the reader keeps up before the next batch: it is never the one dropped
                expected = 2 * sent
                await wait_until(lambda: sum(k == "hop" for k, _ in got) == expected)  # noqa: B023
        stats = (await client.get("/api/stats")).json()
        group.cancel_scope.cancel()
        stalled.close()
    assert stats["events"]["disconnected"] == 1
    assert stats["events"]["dropped"] >= buffer
    assert stats["events"]["clients"] == 1  # the reader, still connected
    assert org.stats.answered == sent and org.stats.failed == 0
    assert sum(k == "hop" for k, _ in got) == org.stats.hops == 2 * sent


async def wait_until_clients(client: httpx.AsyncClient, count: int) -> None:
    with anyio.fail_after(10):
        while (await client.get("/api/stats")).json()["events"]["clients"] < count:
            await anyio.sleep(0.01)


# -- counts: at the source, the same watched or not --------------------------------------------


async def test_counts_are_exact_with_nobody_watching_and_no_hop_event_is_built(
    slow: Organism,
) -> None:
    """With no event-stream client the control plane only tallies: nobody subscribes to
    the hooks (so the pump builds no event), and /api/stats counts every hop and failure."""
    hooks = slow.hooks
    assert hooks.active and not (hooks.events or hooks.hop_events or hooks.starters)
    for _ in range(20):
        await slow.request("boss", job(slow, seconds=0.0), timeout=10)
    with contextlib.suppress(DeliveryError):
        await slow.request("worker", job(slow, seconds=5.0), timeout=0.2)  # a failure
    await slow.wait_idle()
    async with client_of(slow) as client:
        stats = (await client.get("/api/stats")).json()
    assert not (hooks.events or hooks.hop_events or hooks.starters)
    listeners = stats["listeners"]
    assert (listeners["boss"]["hops"], listeners["boss"]["failed"]) == (20, 0)
    assert (listeners["worker"]["hops"], listeners["worker"]["failed"]) == (21, 1)
    assert stats["edges"] == [
        {"from": "_external", "to": "boss", "hops": 20},
        {"from": "_external", "to": "worker", "hops": 1},
        {"from": "boss", "to": "worker", "hops": 20},
    ]
    assert sum(e["hops"] for e in stats["edges"]) == slow.stats.hops == 41


async def test_counts_stay_exact_across_a_client_connecting_mid_load(slow: Organism) -> None:
    """Requests run before, while and after a client connects: /api/stats counts every hop
    whether or not it was watched; the stream's first ``counts`` event plus the hops it sent
    after it make its last ``counts`` event (none counted twice); hop events are subscribed
    to only while the client is connected."""
    import json

    sent = 0
    stop, stopped = anyio.Event(), anyio.Event()

    async def keep_asking() -> None:
        nonlocal sent
        while not stop.is_set():
            async with anyio.create_task_group() as asks:
                for _ in range(20):
                    asks.start_soon(slow.request, "boss", job(slow, seconds=0.0))
            sent += 20
        stopped.set()

    got: list[tuple[str, str]] = []
    async with client_of(slow) as client, anyio.create_task_group() as group:
        group.start_soon(keep_asking)
        await wait_until(lambda: sent >= 100)  # unwatched hops first
        assert not slow.hooks.hop_events
        watching = anyio.CancelScope()

        async def watch() -> None:
            with watching:
                await events(client, got)

        group.start_soon(watch)
        await wait_until(lambda: sum(k == "hop" for k, _ in got) >= 200)  # watched, mid-load
        # finished hops only: no started, conversation or answered events built for it
        hooks = slow.hooks
        assert hooks.hop_events and not (hooks.starters or hooks.events)
        stop.set()
        await stopped.wait()
        await slow.wait_idle()
        total = 2 * sent
        assert slow.stats.hops == total

        def last_counts() -> dict[str, object]:
            found = [json.loads(d) for k, d in got if k == "counts"]
            return found[-1] if found else {}

        edges_total = lambda: sum(e["hops"] for e in last_counts().get("edges", []))  # noqa: E731
        await wait_until(lambda: edges_total() == total)  # sent within RUNS_INTERVAL_SECONDS
        stats = (await client.get("/api/stats")).json()
        watching.cancel()
        await wait_until(lambda: not slow.hooks.hop_events)  # the last client left
        group.cancel_scope.cancel()
    assert stats["edges"] == [
        {"from": "_external", "to": "boss", "hops": sent},
        {"from": "boss", "to": "worker", "hops": sent},
    ]
    assert stats["listeners"]["boss"]["hops"] == stats["listeners"]["worker"]["hops"] == sent
    assert stats["events"]["dropped"] == 0
    kinds = [k for k, _ in got if k in ("hop", "counts")]
    assert kinds[0] == "counts"  # the totals when the client connected, then its hops
    first = json.loads(next(d for k, d in got if k == "counts"))
    counted = {(e["from"], e["to"]): e["hops"] for e in first["edges"]}
    assert 0 < sum(counted.values()) < total  # it connected mid-load
    for k, d in got:
        if k == "hop":
            hop = json.loads(d)
            counted[hop["caller"], hop["listener"]] = counted.get(
                (hop["caller"], hop["listener"]), 0) + 1  # fmt: skip
    assert counted == {(e["from"], e["to"]): e["hops"] for e in stats["edges"]}
    assert last_counts()["edges"] == stats["edges"]


# -- /metrics ----------------------------------------------------------------------------------


async def test_metrics_parse_with_prometheus_client_and_counters_equal_stats(token: str) -> None:
    metrics = {"flush_interval_seconds": 60, "sinks": [{"type": "prometheus"}]}
    org = Organism.from_yaml(SLOW, metrics=metrics)
    async with org, client_of(org) as client:
        for seconds in (0.0, 0.0, 0.0):
            await org.request("boss", job(org, seconds=seconds), timeout=10)
        with contextlib.suppress(DeliveryError):
            await org.request("worker", job(org, seconds=5.0), timeout=0.2)  # a timeout
        await org.wait_idle()
        assert org.metrics is not None and await org.metrics.flush()
        response = await client.get("/metrics")
        stats = org.stats
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    seen: dict[str, float] = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            labels = ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items()))
            seen[f"{sample.name}{{{labels}}}"] = sample.value
    for field, (name, _) in STATS_METRICS.items():
        assert seen[f"{name}_total{{organism=slow}}"] == getattr(stats, field), name
    assert stats.answered == 3 and stats.hops == 7


async def test_metrics_without_a_prometheus_sink_say_how_to_get_one(slow: Organism) -> None:
    async with client_of(slow) as client:
        response = await client.get("/metrics")
    assert response.status_code == 404
    assert "type: prometheus" in response.json()["error"]


# -- lifecycle ---------------------------------------------------------------------------------


async def test_stopping_the_organism_ends_open_event_streams_and_frees_the_port(
    token: str,
) -> None:
    org = Organism.from_yaml(SLOW)
    got: list[tuple[str, str]] = []
    async with org:
        url = org.control_url
        assert url is not None
        client = client_of(org)
        reader = asyncio.get_running_loop().create_task(events(client, got))
        await wait_until(lambda: bool(got))
    with anyio.fail_after(10):
        with contextlib.suppress(httpx.HTTPError):
            await reader  # the stream ended with the organism
    await client.aclose()
    port = httpx.URL(url).port
    with socket.socket() as again:  # as a new server would (connections may be in TIME_WAIT)
        again.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        again.bind(("127.0.0.1", port))
        again.listen()


async def test_the_control_section_is_read_from_the_file_with_key_paths(tmp_path: object) -> None:
    from pathlib import Path

    from xml_pipeline import ConfigError, load_config

    file = Path(str(tmp_path)) / "organism.yaml"
    text = SLOW.read_text().replace("listen: 127.0.0.1:0", "listen: nowhere\n  tokn: x")
    file.write_text(text)
    with pytest.raises(ConfigError) as caught:
        load_config(file)
    problems = {(p.key_path, p.line) for p in caught.value.problems}
    line = text.splitlines().index("  listen: nowhere") + 1
    assert ("control.listen", line) in problems
    assert any(p.key_path == "control.tokn" and "token_env" in p.message
               for p in caught.value.problems)  # fmt: skip
    assert load_config(SLOW).control == ControlConfig(listen="127.0.0.1:0")


async def test_a_port_alone_listens_on_loopback_as_an_integer_or_text_as_control_does(
    tmp_path: object, token: str
) -> None:
    """``listen: 8750`` (YAML reads an integer) is taken as ``--control 8750`` is: one parser;
    a port out of range or a bool is refused with its key path."""
    from pathlib import Path

    from xml_pipeline import ConfigError, load_config

    with socket.socket() as probe:  # a port free now, to serve on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    file = Path(str(tmp_path)) / "organism.yaml"
    handlers = SLOW.parent / "slow_handlers.py"
    (file.parent / handlers.name).write_text(handlers.read_text())
    file.write_text(SLOW.read_text().replace("listen: 127.0.0.1:0", f"listen: {port}"))
    config = load_config(file).control
    assert config is not None and config.host_port == ("127.0.0.1", port)
    assert ControlConfig(listen=port).host_port == ControlConfig(listen=str(port)).host_port  # type: ignore[arg-type]
    async with Organism.from_yaml(file) as org:
        assert org.control_url == f"http://127.0.0.1:{port}"
    for wrong in ("70000", "true"):
        file.write_text(SLOW.read_text().replace("listen: 127.0.0.1:0", f"listen: {wrong}"))
        with pytest.raises(ConfigError) as caught:
            load_config(file)
        [problem] = caught.value.problems
        assert problem.key_path == "control.listen" and "[host:]port" in problem.message


async def test_without_the_web_extra_the_start_says_what_to_install(
    token: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    import sys

    monkeypatch.setitem(sys.modules, "uvicorn", None)  # import uvicorn now fails
    monkeypatch.delitem(sys.modules, "xml_pipeline.control.server")
    org = Organism.from_yaml(SLOW)
    with pytest.raises(UsageError, match=r"pip install 'xml-pipeline\[web\]'"):
        async with org:
            pass


def test_hop_events_are_json_whatever_the_ids_and_names_hold() -> None:
    """Ids the organism makes go out as they are; any other id or name is escaped by json
    (one odd id in a batch quotes the whole batch), and every field comes back exact."""
    import json

    from xml_pipeline import HopEvent
    from xml_pipeline.control.events import EventHub
    from xml_pipeline.control.source import OrganismSource

    hub = EventHub(OrganismSource(None), client_buffer=10)  # type: ignore[arg-type]
    odd = ['c"1\\x', "t\n2\x7f", "é</script>", "0123abcdef", "run-1@host:9"]
    for batch_ids in ([("0a1b", "2c3d")], [("0a1b", "2c3d"), (odd[0], odd[1])], [(odd[2], odd[4])]):
        batch = [
            HopEvent("finished", c, t, 'a"<b>', "l\\1", None, 2, 100.25, 1.5e-05, "timeout")
            for c, t in batch_ids
        ]
        text = hub._encode(batch).decode()
        blocks = text.split("\n\n")[:-1]
        assert len(blocks) == len(batch)
        for (c, t), block in zip(batch_ids, blocks, strict=True):
            assert block.startswith("event: hop\ndata: ")
            data = json.loads(block.removeprefix("event: hop\ndata: "))
            assert (data["conversation"], data["thread"]) == (c, t)
            assert (data["caller"], data["listener"], data["outcome"]) == (
                'a"<b>',
                "l\\1",
                "timeout",
            )
            assert data["attempt"] == 2 and data["duration_seconds"] == 1.5e-05
            assert abs(data["at"] - (hub._wall + 100.25)) < 1e-5
