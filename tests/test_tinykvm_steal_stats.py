"""The steal counters of tinykvm.stats(): started = accepted + refused + failed, and every accepted
connection is either closed (by reason) or still held. In-process ProgramManager, real programs."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import time

import pytest

from cacheserver.programs import ProgramManager

PICKY = '''from kvm_api import set_socket_on_connect, set_socket_on_read, shutdown, write, wait_for_requests, SHUT_RDWR

def on_connect(fd, remote, arg):
    return arg != "refuse"

def on_read(fd, data):
    if data == b"bye":
        shutdown(fd, SHUT_RDWR)
    elif data == b"boom":
        raise RuntimeError("boom")
    else:
        write(fd, data)

set_socket_on_connect(on_connect)
set_socket_on_read(on_read)
wait_for_requests()
'''


@pytest.fixture
def progdir(tmp_path):
    (tmp_path / "picky.py").write_text(PICKY)
    return tmp_path


def steal_stats(pm: ProgramManager) -> dict:
    return json.loads(pm.stats_json("^picky$"))["picky"]["steal"]


async def until(pred, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.02)


def test_steal_counters_add_up(progdir):
    async def main():
        pm = ProgramManager([progdir])
        listener = socket.create_server(("127.0.0.1", 0))
        clients = []
        try:
            for arg in ["", "refuse", "", "", "refuse", ""]:
                client = socket.create_connection(listener.getsockname())
                server, addr = listener.accept()
                accepted = await pm.steal("picky", server, f"{addr[0]}:{addr[1]}", arg)
                assert accepted == (arg != "refuse")
                server.close()
                clients.append(client)
            s = steal_stats(pm)
            assert (s["started"], s["accepted"], s["refused"], s["failed"], s["held"]) == (6, 4, 2, 0, 4)
            a, _, b, c, _, d = clients
            a.sendall(b"bye")                 # the program closes it: Disconnected
            b.sendall(b"boom")                # its callback raises: Error
            c.close()                         # the peer closes it: Disconnected
            await until(lambda: steal_stats(pm)["held"] == 1)
            s = steal_stats(pm)
            assert s["closed"] == {"Disconnected": 2, "Error": 1}
            os.kill(pm.pid("picky"), signal.SIGKILL)          # the last one dies with its program
            await until(lambda: steal_stats(pm)["held"] == 0 and pm.pid("picky") is None)
            s = steal_stats(pm)
            assert s["closed"] == {"Died": 1, "Disconnected": 2, "Error": 1}
            assert s["started"] == s["accepted"] + s["refused"] + s["failed"]
            assert s["accepted"] == sum(s["closed"].values()) + s["held"]
            d.close()
        finally:
            for c in clients:
                c.close()
            listener.close()
            await pm.close()

    asyncio.run(asyncio.wait_for(main(), 30))
