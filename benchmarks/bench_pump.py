"""Pump throughput, CPU per hop and latency, against a bare asyncio.Queue ping-pong floor.

The organism: request -> A -> B -> answer to A -> answer out, i.e. 4 hops per conversation,
every payload checked at every hop, each hop recorded in the conversation history (and a row
with history off). A hop is one message the pump routes: checked, written to the registry
(one open, call or answer), recorded in history. The conversation is written two ways, with the
same 4 hops and the same 4 history entries:

- *return style* (the rows without a style named): A returns ``HandlerResponse(Work, to="b")``
  and is run again with B's answer, which it returns to the requester. Hops: request -> A (A
  runs), A -> B (B runs), B -> A (A runs again), A -> requester. Three handler runs.
- *meta.call style* (rows marked "meta.call"): A does ``done = await meta.call("b", Work)``
  and returns ``done`` to the requester. Hops: request -> A (A runs), A -> B (B runs), B -> A
  (resolves the future A awaits: A resumes, it is not run again), A -> requester. Two handler
  runs, one of them suspended across B's.

So CPU per hop compares the two styles for the same routed work; CPU per conversation (4x CPU
per hop) is printed too. Rows in separate runs of a shared machine differ by up to 1.5x, more
than the styles do, so the "paired" row measures the ratio itself: one organism of each style
in the same event loop, short bursts of the same load taking turns, the median of the per-pair
ratios; the line under the table is the median of that over runs.

Rows take turns within every run (the machine is shared and noisy), and each figure is the
median over runs; ratios are taken per run against the floor measured in that run. CPU per hop
is the process's CPU time (``time.process_time``) over the hops made: steadier than wall time on
a shared machine. Prints a table and writes benchmarks/results/bench_pump.json.

``--metrics`` adds rows at the first ``--inflight`` with the metrics collector on (default
settings): a Prometheus sink, the same with ``tracing: true``, an OpenTelemetry sink on an
in-memory reader, and ``tracing: {otel: true}`` writing spans to an in-memory exporter. "CPU
vs 1st" is then their CPU per hop against metrics off (the first pump row); the collector's
flush tasks run in the same process, so their CPU is in the figure. A "prometheus/off, paired"
row measures that ratio for the Prometheus sink the way the meta.call row does: both organisms
in one loop, bursts taking turns, the median of per-pair ratios.

``--control`` adds a paired row at the first ``--inflight``: an organism with its control plane
on and one event-stream client connected (``curl -N`` reading ``/api/events`` in a process of
its own, so only the server's side is in the figure) against one without, in the same event
loop, short bursts of the same load taking turns; the median of the per-pair CPU ratios. The
same for the control plane on and nobody watching. Events the client lost are printed (none
expected: a client that falls a whole queue behind is dropped, which would void the row).

``--registry`` adds paired rows for the run registry (issue 13): one organism with it on (the
default: finished runs kept, a heartbeat every second) and one with it off (``runs:
{keep_finished: 0, heartbeat_seconds: 0}``) in the same event loop, short bursts of the same
load taking turns, the median of the per-pair CPU ratios; once on the memory backend and once
on Redis (a private ``redis-server`` on a free port), where the heartbeat writes to Redis.
A heartbeat's own cost (snapshot built, JSON, one backend call) is printed under the table.

    python benchmarks/bench_pump.py [--runs 5] [--loop uvloop|asyncio]
        [--conversations 40000] [--inflight 1000,30000] [--metrics] [--recovery] [--registry]
        [--control]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from _results import write_results

from xml_pipeline import (
    CircuitSettings,
    HandlerMetadata,
    HandlerResponse,
    Listener,
    Organism,
    RetrySettings,
    payload,
)

HOPS_PER_CONVERSATION = 4


@payload
@dataclass
class Task:
    text: str
    priority: int = 1


@payload
@dataclass
class Work:
    text: str


@payload
@dataclass
class Done:
    text: str
    ok: bool = True


async def a(msg: Task | Done, meta: HandlerMetadata) -> HandlerResponse:
    if isinstance(msg, Task):
        return HandlerResponse(Work(text=msg.text), to="b")
    return HandlerResponse.respond(msg)


async def b(msg: Work, meta: HandlerMetadata) -> HandlerResponse:
    return HandlerResponse.respond(Done(text=msg.text))


async def a_call(msg: Task, meta: HandlerMetadata) -> HandlerResponse:
    done = await meta.call("b", Work(text=msg.text))
    return HandlerResponse.respond(done)


def organism(style: str = "return", recovery: bool = False, **options: Any) -> Organism:
    """The 4-hop organism; ``style`` is how A calls B: ``"return"`` or ``"call"`` (meta.call);
    ``recovery``: both listeners have a retry policy and a circuit breaker (nothing fails)."""
    handler = a_call if style == "call" else a
    policy: dict[str, Any] = (
        {"retry": RetrySettings(), "circuit": CircuitSettings()} if recovery else {}
    )
    listeners = [
        Listener("a", Task, handler, peers=("b",), max_concurrency=64, **policy),
        Listener("b", Work, b, max_concurrency=64, **policy),
    ]
    return Organism(listeners, **options)


@dataclass
class Measure:
    hops_per_s: float
    cpu_us_per_hop: float


async def load(org: Organism, conversations: int, inflight: int) -> Measure:
    """Hops per second and CPU per hop with ``inflight`` conversations in flight."""
    per_worker = max(1, conversations // inflight)

    async def worker() -> None:
        for _ in range(per_worker):
            await org.request("a", Task(text="hello"), timeout=120)

    gc.collect()
    cpu, wall = time.process_time(), time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(inflight)))
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    hops = per_worker * inflight * HOPS_PER_CONVERSATION
    return Measure(hops / wall, cpu / hops * 1e6)


async def latency(org: Organism, n: int) -> tuple[float, float]:
    """p50 and p99 round trip in microseconds, one conversation at a time."""
    samples = []
    for _ in range(n):
        start = time.perf_counter()
        await org.request("a", Task(text="hello"), timeout=60)
        samples.append((time.perf_counter() - start) * 1e6)
    samples.sort()
    return samples[len(samples) // 2], samples[int(len(samples) * 0.99)]


async def queue_floor(n: int) -> Measure:
    """A bare asyncio.Queue ping-pong between two tasks: the cheapest hop the loop allows."""
    there: asyncio.Queue[int] = asyncio.Queue()
    back: asyncio.Queue[int] = asyncio.Queue()

    async def echo() -> None:
        for _ in range(n):
            back.put_nowait(await there.get())

    task = asyncio.get_running_loop().create_task(echo())
    cpu, wall = time.process_time(), time.perf_counter()
    for i in range(n):
        there.put_nowait(i)
        await back.get()
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    await task
    return Measure(2 * n / wall, cpu / (2 * n) * 1e6)


Row = Callable[[], Awaitable[dict[str, float]]]
CALL_ROW = "pump, {:,} in flight, meta.call"
PAIRED_ROW = "meta.call/return, {:,} in flight, paired"
METRICS_PAIRED_ROW = "prometheus/off, {:,} in flight, paired"
CONTROL_ROW = "control plane on/off, {:,}, paired"
WATCHED_ROW = "control + 1 SSE client/off, {:,}, paired"


async def _until_clients(org: Organism, count: int) -> None:
    """Wait until ``count`` event-stream clients are connected to ``org``'s control plane."""
    for _ in range(2000):
        if _event_stats(org)["clients"] >= count:
            return
        await asyncio.sleep(0.005)
    raise RuntimeError("the event-stream client did not connect (is curl installed?)")


def _event_stats(org: Organism) -> dict[str, int]:
    plane = org._control  # the benchmark reads the hub's counters directly
    assert plane is not None
    return plane.hub.stats()


REGISTRY_ROW = "registry on/off, {:,} in flight, {}, paired"
GC_ROW = "pump, {:,} in flight, gc threshold {:,}"


def rows(options: argparse.Namespace) -> dict[str, Row]:
    def pump(
        inflight: int,
        history: bool = True,
        style: str = "return",
        gc_threshold: int = 0,
        **observe: Any,
    ) -> Row:
        async def measure() -> dict[str, float]:
            if gc_threshold:  # as `organism run --gc-threshold` sets it, for this row only
                default = gc.get_threshold()
                gc.set_threshold(gc_threshold, *default[1:])
                try:
                    return await measured()
                finally:
                    gc.set_threshold(*default)
            return await measured()

        async def measured() -> dict[str, float]:
            provider = spans = None
            if observe.pop("spans", False):
                from opentelemetry.sdk.trace import TracerProvider
                from opentelemetry.sdk.trace.export import SimpleSpanProcessor
                from opentelemetry.sdk.trace.export.in_memory_span_exporter import (
                    InMemorySpanExporter,
                )

                from xml_pipeline.metrics import TracingConfig

                spans = TracerProvider(shutdown_on_exit=False)
                spans.add_span_processor(SimpleSpanProcessor(InMemorySpanExporter()))
                observe["tracing"] = TracingConfig(otel=True, tracer_provider=spans)
            if observe.pop("otel", False):
                from opentelemetry.sdk.metrics import MeterProvider
                from opentelemetry.sdk.metrics.export import InMemoryMetricReader

                from xml_pipeline.metrics import MetricsConfig, OtlpSinkConfig

                provider = MeterProvider(
                    metric_readers=[InMemoryMetricReader()], shutdown_on_exit=False
                )
                sink = OtlpSinkConfig(meter_provider=provider)
                observe["metrics"] = MetricsConfig(sinks=(sink,))
            org = organism(style, ingress_limit=inflight, history=history, **observe)
            async with org:
                await load(org, 2000, 100)  # warm up
                m = await load(org, max(options.conversations, 2 * inflight), inflight)
            for owned in (provider, spans):
                if owned is not None:
                    owned.shutdown()
            return {
                "hops_per_s": m.hops_per_s,
                "cpu_us_per_hop": m.cpu_us_per_hop,
                "cpu_us_per_conversation": m.cpu_us_per_hop * HOPS_PER_CONVERSATION,
            }

        return measure

    async def floor() -> dict[str, float]:
        m = await queue_floor(100_000)
        return {"hops_per_s": m.hops_per_s, "cpu_us_per_hop": m.cpu_us_per_hop}

    def round_trip(style: str = "return") -> Row:
        async def measure() -> dict[str, float]:
            async with organism(style) as org:
                await load(org, 500, 1)
                p50, p99 = await latency(org, 3000)
            return {"p50_us": p50, "p99_us": p99}

        return measure

    async def bursts(
        orgs: dict[str, Organism],
        inflight: int,
        pairs: int,
        then: Callable[[], Awaitable[object]] | None = None,
        before: Callable[[], Awaitable[object]] | None = None,
    ) -> dict[str, list[float]]:
        """CPU per hop of each organism in one event loop, short bursts of the same load
        taking turns (the order reversed every other turn); ``before`` runs once they all
        run, before the warm-up; ``then`` after the bursts, while the organisms still run."""
        conversations = max(options.conversations // 4, 2 * inflight)
        names = list(orgs)
        cpu: dict[str, list[float]] = {name: [] for name in names}
        async with contextlib.AsyncExitStack() as stack:
            for org in orgs.values():
                await stack.enter_async_context(org)
            if before is not None:
                await before()
            for org in orgs.values():
                await load(org, 2000, 100)  # warm up
            for turn in range(pairs):
                for name in names if turn % 2 == 0 else names[::-1]:
                    m = await load(orgs[name], conversations, inflight)
                    cpu[name].append(m.cpu_us_per_hop)
            if then is not None:
                await then()
        return cpu

    def compared(cpu: dict[str, list[float]], name: str, base: str) -> dict[str, float]:
        """``{name}_vs_{base}``: the median of the per-pair CPU ratios; and each median."""
        return {
            f"{name}_vs_{base}": statistics.median(
                n / b for b, n in zip(cpu[base], cpu[name], strict=True)
            ),
            f"{base}_cpu_us_per_hop": statistics.median(cpu[base]),
            f"{name}_cpu_us_per_hop": statistics.median(cpu[name]),
        }

    async def paired(inflight: int, pairs: int = 4) -> dict[str, float]:
        orgs = {style: organism(style, ingress_limit=inflight) for style in ("return", "call")}
        return compared(await bursts(orgs, inflight, pairs), "call", "return")

    async def metrics_paired(inflight: int, pairs: int = 6) -> dict[str, float]:
        """Metrics off and the Prometheus sink alone, measured as `paired` is (rows in
        separate runs differ by more than the metrics cost on a shared machine)."""
        prometheus = {"sinks": [{"type": "prometheus", "listen": "127.0.0.1:0"}]}
        orgs = {
            "off": organism(ingress_limit=inflight),
            "on": organism(ingress_limit=inflight, metrics=prometheus),
        }
        return compared(await bursts(orgs, inflight, pairs), "on", "off")

    async def control_paired(inflight: int, watched: bool, pairs: int = 4) -> dict[str, float]:
        import os
        import subprocess

        conversations = max(options.conversations // 4, 2 * inflight)
        os.environ["XP_BENCH_TOKEN"] = "bench"
        control = {"listen": "127.0.0.1:0", "token_env": "XP_BENCH_TOKEN"}
        orgs = {
            "off": organism(ingress_limit=inflight),
            "on": organism(ingress_limit=inflight, control=control),
        }
        cpu: dict[str, list[float]] = {"off": [], "on": []}
        async with orgs["off"], orgs["on"]:
            client = None
            if watched:
                client = subprocess.Popen(
                    ["curl", "-sN", "-H", "Authorization: Bearer bench",
                     f"{orgs['on'].control_url}/api/events"],
                    stdout=subprocess.DEVNULL,
                )  # fmt: skip
                await _until_clients(orgs["on"], 1)
            for org in orgs.values():
                await load(org, 2000, 100)  # warm up
            for turn in range(pairs):
                for name in ("off", "on") if turn % 2 == 0 else ("on", "off"):
                    m = await load(orgs[name], conversations, inflight)
                    cpu[name].append(m.cpu_us_per_hop)
            events = _event_stats(orgs["on"])
            if client is not None:
                client.terminate()
                client.wait()
        return {
            "on_vs_off": statistics.median(
                on / off for off, on in zip(cpu["off"], cpu["on"], strict=True)
            ),
            "off_cpu_us_per_hop": statistics.median(cpu["off"]),
            "on_cpu_us_per_hop": statistics.median(cpu["on"]),
            "events_dropped": events["dropped"],
            "clients_disconnected": events["disconnected"],
        }

    async def registry(inflight: int, backend: str, pairs: int = 6) -> dict[str, float]:
        """Registry on vs off, paired bursts in one loop (see the module docstring)."""
        off = {"keep_finished": 0, "heartbeat_seconds": 0}
        extra: dict[str, Any] = {}
        server = None
        if backend == "redis":
            sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests.redis_server
            from tests.redis_server import RedisServer

            server = RedisServer()
            server.start()
            extra["backend"] = {"type": "redis", "redis_url": server.url}
        orgs = {
            "on": organism(ingress_limit=inflight, name="on", **extra),
            "off": organism(ingress_limit=inflight, name="off", runs=off, **extra),
        }
        beat_us = 0.0

        async def heartbeat_cost() -> None:
            nonlocal beat_us
            beat = orgs["on"]._heartbeat
            assert beat is not None and beat.beats > 0
            rounds = 50
            started = time.process_time()
            for _ in range(rounds):
                await beat.beat()
            beat_us = (time.process_time() - started) / rounds * 1e6

        try:
            cpu = await bursts(orgs, inflight, pairs, heartbeat_cost)
        finally:
            if server is not None:
                server.stop()
        return {**compared(cpu, "on", "off"), "heartbeat_cpu_us": beat_us}

    first = options.inflight[0]
    table: dict[str, Row] = {"floor: asyncio.Queue ping-pong": floor}
    table[f"pump, {first:,} in flight"] = pump(first)
    # next to the row it is compared with: they run back to back in most runs
    table[CALL_ROW.format(first)] = pump(first, style="call")
    table[PAIRED_ROW.format(first)] = lambda: paired(first)
    for inflight in options.inflight[1:]:
        table[f"pump, {inflight:,} in flight"] = pump(inflight)
    table[f"pump, {options.inflight[0]:,} in flight, history off"] = pump(
        options.inflight[0], history=False
    )
    if options.gc_threshold:
        for inflight in options.inflight:
            table[GC_ROW.format(inflight, options.gc_threshold)] = pump(
                inflight, gc_threshold=options.gc_threshold
            )
    if options.recovery:
        table[f"pump, {first:,}, retry + circuit (no failures)"] = pump(first, recovery=True)
    if options.metrics:
        first = options.inflight[0]
        prometheus = {"sinks": [{"type": "prometheus", "listen": "127.0.0.1:0"}]}
        table[f"pump, {first:,}, metrics: prometheus"] = pump(first, metrics=prometheus)
        table[f"pump, {first:,}, prometheus + tracing"] = pump(
            first, metrics=prometheus, tracing=True
        )
        table[f"pump, {first:,}, metrics: otel (in memory)"] = pump(first, otel=True)
        table[f"pump, {first:,}, tracing: otel spans (in memory)"] = pump(first, spans=True)
        table[METRICS_PAIRED_ROW.format(first)] = lambda: metrics_paired(first)
    if options.control:
        table[CONTROL_ROW.format(first)] = lambda: control_paired(first, watched=False)
        table[WATCHED_ROW.format(first)] = lambda: control_paired(first, watched=True)
    if options.registry:
        table[REGISTRY_ROW.format(first, "memory")] = lambda: registry(first, "memory")
        table[REGISTRY_ROW.format(first, "redis")] = lambda: registry(first, "redis")
    table["round trip, 1 in flight"] = round_trip()
    table["round trip, 1 in flight, meta.call"] = round_trip("call")
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--loop", choices=["uvloop", "asyncio"], default="uvloop")
    parser.add_argument("--conversations", type=int, default=40_000)
    parser.add_argument(
        "--inflight",
        type=lambda text: [int(part) for part in text.split(",")],
        default=[1000, 30_000],
        help="comma-separated conversations in flight, one row each (1000,30000)",
    )
    parser.add_argument(
        "--metrics", action="store_true", help="add rows with the metrics collector on"
    )
    parser.add_argument(
        "--control",
        action="store_true",
        help="add paired rows with the control plane on (nobody watching, one SSE client)",
    )
    parser.add_argument(
        "--recovery",
        action="store_true",
        help="add a row with a retry policy and a circuit breaker on both listeners",
    )
    parser.add_argument(
        "--registry",
        action="store_true",
        help="add paired rows: the run registry on against off, memory and Redis",
    )
    parser.add_argument(
        "--gc-threshold",
        type=int,
        default=10_000,
        help="add a row per --inflight with the cyclic GC's first threshold set to this, as "
        "`organism run` sets it (10000; 0: no such rows)",
    )
    parser.add_argument(
        "--only",
        default="",
        help="run only the rows whose name contains this text (the floor, the first pump row "
        "and the paired meta.call row always run: the table is read against them)",
    )
    options = parser.parse_args()
    factory: Callable[[], asyncio.AbstractEventLoop] = asyncio.new_event_loop
    if options.loop == "uvloop":
        import uvloop

        factory = uvloop.new_event_loop
    table = rows(options)
    if options.only:
        kept = [*list(table)[:2], PAIRED_ROW.format(options.inflight[0])]
        table = {n: row for n, row in table.items() if n in kept or options.only in n}
    names = list(table)
    runs: list[dict[str, dict[str, float]]] = []
    for run in range(options.runs):
        order = names[run % len(names) :] + names[: run % len(names)]  # rows take turns
        results: dict[str, dict[str, float]] = {}
        for name in order:
            with asyncio.Runner(loop_factory=factory) as runner:
                results[name] = runner.run(table[name]())
        runs.append(results)
    floor_name, first = names[0], names[1]
    medians = {
        name: {key: statistics.median(r[name][key] for r in runs) for key in runs[0][name]}
        for name in names
    }
    for name in names[1:]:
        if "hops_per_s" in medians[name]:
            medians[name]["ratio_to_floor"] = statistics.median(
                r[name]["hops_per_s"] / r[floor_name]["hops_per_s"] for r in runs
            )
            medians[name]["cpu_vs_first_row"] = statistics.median(
                r[name]["cpu_us_per_hop"] / r[first]["cpu_us_per_hop"] for r in runs
            )
    call_vs_return = medians[PAIRED_ROW.format(options.inflight[0])]["call_vs_return"]
    header = (
        f"{'row':42} {'hops/s':>10} {'CPU us/hop':>10} {'CPU us/conv':>11} {'/floor':>7} "
        f"{'CPU vs 1st':>10}"
    )
    print(header)
    print("-" * len(header))
    for name in names:
        m = medians[name]
        if "p50_us" in m:
            print(f"{name:42} p50 {m['p50_us']:.1f} us, p99 {m['p99_us']:.1f} us")
            continue
        if "events_dropped" in m:  # a control plane row
            per_hop = f"{m['off_cpu_us_per_hop']:.2f} -> {m['on_cpu_us_per_hop']:.2f} us"
            lost = f", {m['events_dropped']:.0f} events dropped" if "SSE" in name else ""
            print(f"{name:42} {m['on_vs_off']:.2f}x CPU per hop ({per_hop}{lost})")
            continue
        if "on_vs_off" in m and "heartbeat_cpu_us" not in m:
            per_hop = f"{m['off_cpu_us_per_hop']:.2f} -> {m['on_cpu_us_per_hop']:.2f} us"
            print(f"{name:42} {m['on_vs_off']:.2f}x CPU per hop ({per_hop})")
            continue
        if "call_vs_return" in m:
            per_hop = f"{m['return_cpu_us_per_hop']:.2f} -> {m['call_cpu_us_per_hop']:.2f} us"
            print(f"{name:42} {m['call_vs_return']:.2f}x CPU per hop ({per_hop})")
            continue
        if "on_vs_off" in m:
            per_hop = f"{m['off_cpu_us_per_hop']:.2f} -> {m['on_cpu_us_per_hop']:.2f} us"
            beat = f"one heartbeat {m['heartbeat_cpu_us']:.0f} us CPU"
            print(f"{name:42} {m['on_vs_off']:.3f}x CPU per hop ({per_hop}; {beat})")
            continue
        ratio = f"{m['ratio_to_floor']:>7.3f}" if "ratio_to_floor" in m else f"{'':>7}"
        vs = f"{m['cpu_vs_first_row']:>10.2f}" if "cpu_vs_first_row" in m else f"{'':>10}"
        conv = m.get("cpu_us_per_conversation")
        per_conv = f"{conv:>11.1f}" if conv is not None else f"{'':>11}"
        print(
            f"{name:42} {m['hops_per_s']:>10,.0f} {m['cpu_us_per_hop']:>10.2f} {per_conv} "
            f"{ratio} {vs}"
        )
    print(
        f"(medians of {options.runs} runs, {options.loop}; {HOPS_PER_CONVERSATION} hops per "
        "conversation; rows took turns)"
    )
    print(
        f"meta.call / return style, CPU per hop at {options.inflight[0]:,} in flight: "
        f"{call_vs_return:.2f}x (paired bursts, median over runs; target <= 1.3x)"
    )
    scaling = {}
    low, high = options.inflight[0], options.inflight[-1]
    pairs: list[tuple[str, Callable[[int], str]]] = [("default gc", "pump, {:,} in flight".format)]
    if options.gc_threshold:
        pairs.append((
            f"gc threshold {options.gc_threshold:,}",
            lambda n: GC_ROW.format(n, options.gc_threshold),
        ))  # fmt: skip
    for label, row in pairs:
        if high != low and row(low) in names and row(high) in names:
            scaling[label] = statistics.median(
                r[row(high)]["cpu_us_per_hop"] / r[row(low)]["cpu_us_per_hop"] for r in runs
            )
    if scaling:
        said = ", ".join(f"{ratio:.2f}x with {label}" for label, ratio in scaling.items())
        print(f"CPU per hop, {high:,} in flight / {low:,}: {said} (target <= 1.3x)")
    write_results(
        "bench_pump",
        options,
        runs=runs,
        medians=medians,
        call_vs_return_cpu=call_vs_return,
        cpu_scaling_high_vs_low=scaling,
    )


if __name__ == "__main__":
    main()
