"""What every benchmark records beside its numbers: the processor, and JSON results.
Kept apart from the scripts so that those running where Kedro is not installed (the GPU
check) can import it."""

from __future__ import annotations

import json
import platform
from pathlib import Path


def cpu_model(cpuinfo: Path = Path("/proc/cpuinfo")) -> str:
    """The processor's model name, with its family and model numbers where `cpuinfo`
    has them: a virtual machine may name only the vendor's line ("AMD EPYC"), and the
    numbers tell its generations apart (family 25 is Zen 3 or 4, family 26 Zen 5)."""
    try:
        fields: dict[str, str] = {}
        for line in cpuinfo.read_text().splitlines():
            if not line.strip():
                break  # the first processor's block is enough
            key, _, value = line.partition(":")
            fields.setdefault(key.strip(), value.strip())
    except OSError:
        fields = {}
    if "model name" not in fields:
        return platform.processor() or "unknown"
    if "cpu family" in fields and "model" in fields:
        return f"{fields['model name']} (family {fields['cpu family']}, model {fields['model']})"
    return fields["model name"]


def write_json(path: Path, record: dict) -> None:
    """A benchmark's results as indented JSON (the --json option of the scripts here)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record, indent=2) + "\n")
