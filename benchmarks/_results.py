"""Writing a benchmark's JSON results, the same way for every script in this folder."""

from __future__ import annotations

import argparse
import json
import os
import platform
from pathlib import Path
from typing import Any

RESULTS_DIR = Path(__file__).parent / "results"


def write_results(name: str, args: argparse.Namespace, **fields: Any) -> Path:
    """Write ``results/<name>.json`` (machine facts, the arguments, ``fields``); its path."""
    path = RESULTS_DIR / f"{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    report = {
        "benchmark": name,
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "args": vars(args),
        **fields,
    }
    path.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {path}")
    return path
