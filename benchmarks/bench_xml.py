"""Throughput of the XML layer against plain lxml on the same envelope.

Run from the project root::

    python benchmarks/bench_xml.py [--runs 7] [--seconds 0.2]

Prints a table (operations per second, median of the runs, and the ratio to the plain lxml
baseline measured in the same run) and writes ``benchmarks/results/bench_xml.json``. The
target is parse + validate + bind (row b) within 2x of the baseline (row c).
"""

from __future__ import annotations

import argparse
import enum
import json
import platform
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path

from lxml import etree

from xml_pipeline._errors import XmlInputError
from xml_pipeline._wire.envelope import Envelope
from xml_pipeline._wire.parsing import ParseLimits, parse_guarded
from xml_pipeline._wire.payloads import (
    check_payload,
    from_element,
    from_xml,
    payload,
    payload_spec,
    to_xml,
)

RESULTS = Path(__file__).parent / "results" / "bench_xml.json"
BASELINE = "c. baseline lxml fromstring + tostring"


class Priority(enum.Enum):
    LOW = "low"
    NORMAL = "normal"
    HIGH = "high"


@payload
@dataclass
class Address:
    street: str
    city: str
    postcode: str
    country: str


@payload
@dataclass
class Order:
    """A customer order, as an order service would send it to a shipping listener."""

    order_id: int
    customer: str
    placed_at: datetime
    total: Decimal
    priority: Priority
    express: bool
    weight_kg: float
    items: list[str]
    ship_to: Address
    note: str | None = None


ORDER = Order(
    order_id=100_245,
    customer="Ingrid Solberg <ingrid@example.org>",
    placed_at=datetime(2024, 5, 17, 9, 30, 12, 250_000, tzinfo=timezone(timedelta(hours=2))),
    total=Decimal("1299.50"),
    priority=Priority.HIGH,
    express=True,
    weight_kg=12.75,
    items=["SKU-10021 desk lamp", "SKU-20417 office chair", "SKU-33001 cable tray & clips"],
    ship_to=Address(street="Karl Johans gate 22", city="Oslo", postcode="0159", country="Norway"),
    note="Leave at the reception; call ahead if closed.",
)


def _loops(fn: Callable[[], object], seconds: float) -> int:
    """A loop count for ``fn`` that takes about ``seconds``."""
    fn()
    n = 1
    while True:
        t0 = time.perf_counter()
        for _ in range(n):
            fn()
        took = time.perf_counter() - t0
        if took >= seconds / 4:
            return max(1, int(n * seconds / took))
        n *= 2


def _rates(
    fns: dict[str, Callable[[], object]], runs: int, seconds: float
) -> dict[str, dict[str, float]]:
    """Operations per second of each row: median of ``runs`` runs, the rows taking turns
    within every run, so that a slow moment of this shared machine hits every row alike.

    ``x_baseline`` is the median over runs of the row's time over the baseline's (row c) in
    the same run.
    """
    loops = {name: _loops(fn, seconds) for name, fn in fns.items()}
    samples: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(runs):
        for name, fn in fns.items():
            n = loops[name]
            t0 = time.perf_counter()
            for _ in range(n):
                fn()
            samples[name].append((time.perf_counter() - t0) / n)
    base = samples[BASELINE]
    return {
        name: {
            "ops_per_s": 1 / statistics.median(times),
            "us_per_op": statistics.median(times) * 1e6,
            "x_baseline": statistics.median(t / b for t, b in zip(times, base, strict=True)),
        }
        for name, times in samples.items()
    }


def _reject_us(data: bytes, limits: ParseLimits | None, reason: str, runs: int) -> float:
    """Median microseconds to reject one hostile input with ``reason``."""
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        try:
            Envelope.from_bytes(data, limits)
        except XmlInputError as exc:
            took = time.perf_counter() - t0
            if exc.reason != reason:
                raise SystemExit(f"expected {reason}, got {exc.reason}: {exc}") from None
        else:
            raise SystemExit(f"hostile input accepted (expected {reason})")
        times.append(took * 1e6)
    return statistics.median(times)


def hostile_inputs() -> dict[str, tuple[bytes, ParseLimits | None, str]]:
    """The capped hostile inputs: name -> (bytes, limits, expected reason)."""
    lol = "".join(f'<!ENTITY l{i} "{f"&l{i - 1};" * 10}">' for i in range(1, 10))
    laughs = f'<?xml version="1.0"?><!DOCTYPE m [<!ENTITY l0 "lol">{lol}]><m>&l9;</m>'
    return {
        "too_large 20 MB text": (b"<m>" + b"x" * 20_000_000 + b"</m>", None, "too_large"),
        "depth 10,000": (b"<m>" * 10_000 + b"</m>" * 10_000, None, "too_deep"),
        "billion laughs": (laughs.encode(), None, "doctype"),
        "billion laughs, UTF-16": (
            laughs.replace('"1.0"', '"1.0" encoding="UTF-16"').encode("utf-16"),
            None,
            "doctype",
        ),
        "100k siblings": (b"<m>" + b"<a/>" * 100_000 + b"</m>", None, "too_large"),
        "100k siblings, max_bytes raised": (
            b"<m>" + b"<a/>" * 100_000 + b"</m>",
            ParseLimits(max_bytes=1 << 20),
            "too_many_elements",
        ),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=7, help="timed runs per row (median)")
    parser.add_argument("--seconds", type=float, default=0.2, help="length of one timed run")
    args = parser.parse_args()

    payload_xml = to_xml(ORDER)
    envelope = Envelope("orders", "shipping", "4f1c9a0e5b7d2c3a", ORDER).to_bytes()
    assert from_xml(Order, payload_xml) == ORDER
    assert from_element(Order, Envelope.from_bytes(envelope).payload) == ORDER

    def round_trip() -> object:
        return from_xml(Order, to_xml(ORDER))

    def envelope_in() -> object:
        env = Envelope.from_bytes(envelope)
        return from_element(Order, env.payload)

    def lxml_baseline() -> object:
        return etree.tostring(etree.fromstring(envelope))

    def check() -> object:
        check_payload(ORDER)
        return None

    # where (b) goes, step by step, on a tree kept alive so each step is timed alone
    tree = parse_guarded(envelope)
    element = Envelope.from_element(tree).payload
    spec = payload_spec(Order)
    steps: dict[str, Callable[[], object]] = {
        "b1. parse_guarded": lambda: parse_guarded(envelope),
        "b2. Envelope.from_element": lambda: Envelope.from_element(tree),
        "b3. XSD validate the payload": lambda: spec.schema.validate(element),
        "b4. bind (from_element, validate=False)": lambda: from_element(
            Order,
            element,
            validate=False,
        ),
        "to_xml alone": lambda: to_xml(ORDER),
        "Envelope.to_bytes, payload object": lambda: Envelope("a", "b", "t", ORDER).to_bytes(),
    }
    rows = _rates(
        {
            "a. to_xml -> from_xml round trip": round_trip,
            "b. envelope parse + validate + bind": envelope_in,
            BASELINE: lxml_baseline,
            "d. check_payload": check,
            **steps,
        },
        args.runs,
        args.seconds,
    )
    rejects = {
        name: _reject_us(data, limits, reason, args.runs)
        for name, (data, limits, reason) in hostile_inputs().items()
    }

    print(
        f"payload {len(payload_xml)} bytes, envelope {len(envelope)} bytes; "
        f"median of {args.runs} runs"
    )
    print(f"{'operation':42} {'ops/s':>10} {'us/op':>8} {'x baseline':>11}")
    for name, row in rows.items():
        print(
            f"{name:42} {row['ops_per_s']:>10,.0f} {row['us_per_op']:>8.2f} "
            f"{row['x_baseline']:>11.2f}"
        )
    print(f"\n{'e. rejecting a hostile input':42} {'us':>10}")
    for name, us in rejects.items():
        print(f"{name:42} {us:>10,.1f}")
    ratio = rows["b. envelope parse + validate + bind"]["x_baseline"]
    print(f"\ntarget: b within 2x of c -> {ratio:.2f}x {'OK' if ratio <= 2 else 'MISSED'}")

    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(
        json.dumps(
            {
                "python": platform.python_version(),
                "lxml": ".".join(map(str, etree.LXML_VERSION)),
                "libxml2": ".".join(map(str, etree.LIBXML_VERSION)),
                "payload_bytes": len(payload_xml),
                "envelope_bytes": len(envelope),
                "runs": args.runs,
                "rows": rows,
                "reject_us": rejects,
                "target_b_within_2x_of_c": ratio <= 2,
            },
            indent=2,
        )
        + "\n"
    )
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
