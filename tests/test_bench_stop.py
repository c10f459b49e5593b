"""Stopping a benchmark stops the job it is running (no orphaned worker keeps training)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="SIGTERM semantics are POSIX")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _wait_for(predicate, seconds: float = 30.0) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return False


def test_a_terminated_benchmark_terminates_its_worker(tmp_path: Path) -> None:
    pid_file = tmp_path / "worker.pid"
    # the harness, with a worker that records its pid and would otherwise run for a minute
    script = textwrap.dedent(
        f"""
        import sys
        from pathlib import Path
        from aptune.bench import harness

        worker = "import os, time; open({str(pid_file)!r}, 'w').write(str(os.getpid())); time.sleep(60)"
        harness._worker_command = lambda *args: [sys.executable, "-c", worker]
        print(harness._run_isolated(["job"], Path({str(tmp_path / "job.log")!r})))
        """
    )
    bench = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        # importing torch and transformers in the harness process can take minutes on a loaded machine
        started = _wait_for(lambda: pid_file.is_file() and pid_file.read_text().strip(), 300.0)
        assert started, "worker never started"
        worker = int(pid_file.read_text())
        assert _alive(worker)
        bench.send_signal(signal.SIGTERM)
        assert bench.wait(timeout=40) == 128 + signal.SIGTERM
        assert _wait_for(lambda: not _alive(worker), 10.0), "the worker outlived the benchmark"
    finally:
        bench.kill()
        if pid_file.is_file() and pid_file.read_text().strip() and _alive(int(pid_file.read_text())):
            os.kill(int(pid_file.read_text()), signal.SIGKILL)


def test_a_worker_that_finishes_reports_its_exit_status(tmp_path: Path, monkeypatch) -> None:
    from aptune.bench import harness

    monkeypatch.setattr(harness, "_worker_command", lambda *a: [sys.executable, "-c", "print('x'); exit(3)"])
    error = harness._run_isolated(["job"], tmp_path / "job.log")
    assert error is not None and error.startswith("exit status 3:") and "x" in error
    monkeypatch.setattr(harness, "_worker_command", lambda *a: [sys.executable, "-c", "pass"])
    assert harness._run_isolated(["job"], tmp_path / "job.log") is None
