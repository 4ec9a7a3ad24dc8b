"""What the benchmarks record as the processor."""

from __future__ import annotations

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
_spec = importlib.util.spec_from_file_location("machine", ROOT / "benchmarks" / "machine.py")
machine = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(machine)

TWO_PROCESSORS = """processor\t: 0
vendor_id\t: AuthenticAMD
cpu family\t: 25
model\t\t: 17
model name\t: AMD EPYC

processor\t: 1
vendor_id\t: AuthenticAMD
cpu family\t: 26
model\t\t: 2
model name\t: Another name
"""


def test_a_generic_model_name_comes_with_the_first_processors_family_and_model(tmp_path):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(TWO_PROCESSORS)
    assert machine.cpu_model(cpuinfo) == "AMD EPYC (family 25, model 17)"


def test_without_family_numbers_the_model_name_alone(tmp_path):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nmodel name\t: Some CPU\n")
    assert machine.cpu_model(cpuinfo) == "Some CPU"


def test_without_cpuinfo_the_platforms_name(tmp_path, monkeypatch):
    monkeypatch.setattr(machine.platform, "processor", lambda: "arm")
    assert machine.cpu_model(tmp_path / "missing") == "arm"
    monkeypatch.setattr(machine.platform, "processor", lambda: "")
    assert machine.cpu_model(tmp_path / "missing") == "unknown"
