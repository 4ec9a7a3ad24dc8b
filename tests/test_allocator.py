"""glibc keeps the memory a step frees for the next step once `keep_freed_memory` ran."""

from __future__ import annotations

import platform
import subprocess
import sys
import textwrap

import pytest

from selfsup.allocator import keep_freed_memory

GLIBC = platform.system() == "Linux" and platform.libc_ver()[0] == "glibc"

# Page faults of four rounds of allocating and freeing 200 MB in 10 MB tensors (a
# step's activations), with glibc's initial thresholds (128 KiB; glibc moves them as a
# process runs, so they are pinned here to make the baseline the same in every run), then
# after `keep_freed_memory`. In a fresh process, so the test process's allocator is left
# as it is.
_FAULTS_SCRIPT = textwrap.dedent(
    """
    import ctypes
    import resource
    import torch
    from selfsup.allocator import M_MMAP_THRESHOLD, M_TRIM_THRESHOLD, keep_freed_memory

    libc = ctypes.CDLL(None)
    libc.mallopt(M_MMAP_THRESHOLD, 128 * 1024)
    libc.mallopt(M_TRIM_THRESHOLD, 128 * 1024)

    def rounds():
        for _ in range(4):
            tensors = [torch.ones(10 * 2**20 // 4) for _ in range(20)]
            del tensors

    def faults():
        rounds()  # the first round may fault wherever the memory came from
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        rounds()
        return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before

    default = faults()
    applied = keep_freed_memory()
    print(default, faults(), applied, keep_freed_memory())
    """
)


@pytest.mark.skipif(not GLIBC, reason="the thresholds are glibc's")
def test_freed_memory_is_reused_without_page_faults():
    result = subprocess.run(
        [sys.executable, "-c", _FAULTS_SCRIPT], capture_output=True, text=True, check=True
    )
    default, kept, applied, again = result.stdout.split()
    # 4 rounds x 200 MB of 4 KiB pages is 204,800 faults when nothing is kept.
    assert int(default) > 100_000
    assert int(kept) < 1_000
    assert applied == "True" and again == "True"


@pytest.mark.skipif(GLIBC, reason="only systems without glibc leave the allocator alone")
def test_other_systems_are_left_alone():
    assert keep_freed_memory() is False
