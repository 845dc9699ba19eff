"""A program that crashes mid-request is reported with the signal that killed it.

The server kills the process of a failed request (kill_now) at once; the process may already be a
zombie then. Popen.kill() polls (waitpid) first and would reap it out from under asyncio's child
watcher, which then says "Unknown child process pid N, will report returncode 255". This test makes
that order certain: the watcher's waitpid is held until the server has signalled the dead process.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import time
from pathlib import Path

import pytest

from cacheserver.programs import ProgramError, ProgramManager, _Program

CRASH = '''import os, signal
from kvm_api import set_backend_get, wait_for_requests

def on_get(url, arg):
    os.kill(os.getpid(), signal.SIGSEGV)

set_backend_get(on_get)
wait_for_requests()
'''


def wait_until_zombie(pid: int, deadline: float = 10.0) -> None:
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except (FileNotFoundError, IndexError):
            return
        if state == "Z":
            return
        time.sleep(0.005)


def test_a_crash_is_reported_as_its_signal_when_killed_after_death(tmp_path, monkeypatch, caplog):
    (tmp_path / "crash.py").write_text(CRASH)
    killed: list[_Program] = []
    signalled = threading.Event()
    real_waitpid = os.waitpid
    real_kill_now = _Program.kill_now

    def held_waitpid(pid: int, options: int):
        if options == 0:            # the child watcher's thread; Popen.poll() uses WNOHANG
            signalled.wait(20)
        return real_waitpid(pid, options)

    def kill_now_after_death(self: _Program) -> None:
        wait_until_zombie(self.proc.pid)
        real_kill_now(self)
        killed.append(self)
        signalled.set()

    monkeypatch.setattr(os, "waitpid", held_waitpid)
    monkeypatch.setattr(_Program, "kill_now", kill_now_after_death)
    caplog.set_level(logging.INFO, logger="cacheserver.programs")

    async def main() -> None:
        pm = ProgramManager([tmp_path])
        try:
            with pytest.raises(ProgramError) as e:
                await pm.request("crash", url="/now")
            assert e.value.reason == "crash"
            assert killed, "the server did not kill the crashed process"
            assert await asyncio.wait_for(killed[0].proc.wait(), 10) == -11
            end = time.monotonic() + 10
            while "while serving a request" not in caplog.text and time.monotonic() < end:
                await asyncio.sleep(0.01)
        finally:
            signalled.set()
            await pm.close()

    asyncio.run(asyncio.wait_for(main(), 30))
    assert "program 'crash' (pid" in caplog.text
    assert "was killed by SIGSEGV while serving a request" in caplog.text
    assert "status 255" not in caplog.text
