"""One kedro run per project folder: a second is refused, a killed one frees the folder."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest

from selfsup.hooks import ConcurrentRunError, RunLockHooks

HOLD_THE_LOCK = """
import time
from selfsup.hooks import RunLockHooks
hooks = RunLockHooks()
hooks.before_pipeline_run({}, None, None)
print("held", flush=True)
time.sleep(120)
"""


@pytest.fixture
def lock_holder(tmp_path):
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD_THE_LOCK], cwd=tmp_path, stdout=subprocess.PIPE, text=True
    )
    assert holder.stdout.readline().strip() == "held"
    yield holder
    holder.kill()
    holder.wait()


def test_a_second_run_in_the_same_folder_is_refused_naming_the_first(
    tmp_path, monkeypatch, lock_holder
):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConcurrentRunError) as refused:
        RunLockHooks().before_pipeline_run({}, None, None)
    message = str(refused.value)
    assert f"pid {lock_holder.pid}" in message
    assert str(tmp_path / ".kedro_run.lock") in message


def test_a_killed_run_leaves_no_stuck_lock(tmp_path, monkeypatch, lock_holder):
    monkeypatch.chdir(tmp_path)
    os.kill(lock_holder.pid, signal.SIGKILL)
    lock_holder.wait()
    hooks = RunLockHooks()
    hooks.before_pipeline_run({}, None, None)
    assert f"pid {os.getpid()}" in (tmp_path / ".kedro_run.lock").read_text()
    hooks.after_pipeline_run({}, None, None)


def test_a_finished_or_failed_run_releases_the_lock(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    first = RunLockHooks()
    first.before_pipeline_run({}, None, None)
    first.on_pipeline_error(RuntimeError("node failed"), {}, None, None)
    second = RunLockHooks()
    second.before_pipeline_run({}, None, None)
    second.after_pipeline_run({}, None, None)


def test_a_run_stopped_before_it_started_does_not_lock_out_the_next_in_one_process(
    tmp_path, monkeypatch
):
    """Kedro calls no after- or error-hook when another before-hook raises; the same
    hooks object (settings.HOOKS) then serves the next run of the process."""
    monkeypatch.chdir(tmp_path)
    hooks = RunLockHooks()
    hooks.before_pipeline_run({}, None, None)
    hooks.before_pipeline_run({}, None, None)
    hooks.after_pipeline_run({}, None, None)
