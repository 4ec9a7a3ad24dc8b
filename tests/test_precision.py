"""`training.precision`: which runs use bf16 autocast."""

from __future__ import annotations

import pytest
import torch

from selfsup import precision
from selfsup.precision import cpu_has_native_bf16, trains_in_bf16

AMD_ZEN5 = "flags\t\t: fpu sse2 avx2 avx512f avx512_bf16 avx512_vnni\n"
SAPPHIRE_RAPIDS = "flags\t\t: fpu avx512f amx_bf16 amx_tile amx_int8\n"
ICE_LAKE = "flags\t\t: fpu avx2 avx512f avx512bw avx512_vnni\n"


@pytest.mark.parametrize(
    ("flags", "native"), [(AMD_ZEN5, True), (SAPPHIRE_RAPIDS, True), (ICE_LAKE, False)]
)
def test_native_bf16_is_read_from_the_cpu_flags(tmp_path, flags, native):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nmodel name\t: some cpu\n" + flags)
    assert cpu_has_native_bf16(cpuinfo) is native


def test_an_unreadable_cpuinfo_means_no_native_bf16(tmp_path):
    assert cpu_has_native_bf16(tmp_path / "missing") is False


@pytest.mark.parametrize("native", [False, True])
def test_auto_is_bf16_on_cuda_and_on_native_cpus_only(monkeypatch, native):
    monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda: native)
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert trains_in_bf16("auto", cuda) is True
    assert trains_in_bf16("auto", cpu) is native
    assert trains_in_bf16("fp32", cuda) is False and trains_in_bf16("fp32", cpu) is False
    assert trains_in_bf16("bf16", cpu) is True


def test_an_unknown_precision_is_named():
    with pytest.raises(ValueError, match="training.precision='fp16'"):
        trains_in_bf16("fp16", torch.device("cpu"))
