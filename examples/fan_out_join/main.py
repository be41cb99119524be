"""Run the fan_out_join example: python examples/fan_out_join/main.py

Asks the desk three questions and prints, for each, the hops it took and the desk's answer.
"""

from __future__ import annotations

import textwrap
from pathlib import Path

import anyio

from xml_pipeline import HopEvent, Organism

HERE = Path(__file__).resolve().parent

QUESTIONS = [
    ("6*7", "oslo"),  # both peers answer
    ("6*7", "atlantis"),  # the lookup fails: the planner catches it and answers without a city
    ("1/0", "oslo"),  # the calculator fails: so does the planner; the desk words its ErrorReport
]


async def main() -> None:
    async with Organism.from_yaml(HERE / "organism.yaml") as org:
        from handlers import Answer, Question  # the organism's own module (its folder)

        hops: list[str] = []

        def record(event: object) -> None:
            if isinstance(event, HopEvent) and event.kind == "started":  # a handler about to run
                hops.append(f"{event.sender} -> {event.listener}")

        org.hooks.subscribe(record)
        for expr, key in QUESTIONS:
            hops.clear()
            question = Question(expr=expr, key=key)
            answer = await org.request("desk", question, timeout=10, expect=Answer)
            print(f"{expr} / {key}:")
            print(f"  hops: {', '.join(hops)}")
            print(f"  answer: {answer.text}")
            if answer.detail is not None:
                detail = textwrap.wrap(answer.detail, 92)
                print(f"  detail: {detail[0]}", *(f"    {line}" for line in detail[1:]), sep="\n")


if __name__ == "__main__":
    anyio.run(main)
