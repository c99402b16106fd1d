"""Small helpers shared by tests: waiting for a condition instead of sleeping."""
from __future__ import annotations

import asyncio
import subprocess
import time


async def wait_for(predicate, timeout: float = 20.0, what: str = "condition", interval: float = 0.05):
    """Await until predicate() (sync or async) returns a truthy value; return it."""
    deadline = time.monotonic() + timeout
    last = None
    while True:
        last = predicate()
        if asyncio.iscoroutine(last):
            last = await last
        if last:
            return last
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what} (last: {last!r})")
        await asyncio.sleep(interval)


def wait_for_sync(predicate, timeout: float = 20.0, what: str = "condition", interval: float = 0.05):
    """Blocking version of wait_for."""
    deadline = time.monotonic() + timeout
    while True:
        last = predicate()
        if last:
            return last
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what} (last: {last!r})")
        time.sleep(interval)


def central_over(storage):
    """The real Central around an opened storage (nothing connects until used), for tests of
    operations that need only the database: alerts, silences."""
    from central.config import Config
    from central.service import Central
    from central.sshpool import SSHPool

    config = Config()
    return Central(config, storage, SSHPool(config.ssh, config.key_path))


def stop_process(proc: subprocess.Popen, timeout: float = 15.0) -> None:
    """End a process the test started, by its PID: SIGTERM, then SIGKILL after timeout seconds."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
