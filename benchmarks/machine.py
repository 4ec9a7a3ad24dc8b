"""What every benchmark records beside its numbers: the processor, and JSON results.
Kept apart from the scripts so that those running where Kedro is not installed (the GPU
check) can import it."""

from __future__ import annotations

import json
import platform
from pathlib import Path


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def write_json(path: Path, record: dict) -> None:
    """A benchmark's results as indented JSON (the --json option of the scripts here)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record, indent=2) + "\n")
