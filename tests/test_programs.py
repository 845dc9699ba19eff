"""ProgramManager + kvm_api.host with real TCP sockets and real program processes."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest
from polling import DEADLINE, async_wait_for, wait_for

from cacheserver.programs import (
    BUNDLED_DIR,
    ProgramError,
    ProgramManager,
    default_search_dirs,
    find_program,
)

HELLO = (b"HTTP/1.1 200 OK\r\nServer: Varnish Cache Edgerprise\r\nContent-Type: text/plain\r\n"
         b"Content-Length: 13\r\n\r\nHello World!\n")
REQUEST = b"GET /tcp HTTP/1.1\r\nHost: x\r\n\r\n"

# What on_connect/on_read do is chosen by the steal argument and the bytes the client sends.
TESTPROG = r'''
import json
import time

from kvm_api import (SHUT_RDWR, SHUT_WR, Print, set_backend_get, set_socket_on_connect,
                     set_socket_on_disconnect, set_socket_on_read, set_socket_on_writable,
                     shutdown, wait_for_requests, write)

open_fds = set()
half_closed = set()
bad_disconnect = set()
reasons = {}


def on_connect(fd, remote, arg):
    if arg == "refuse":
        return False
    if arg == "hang":
        time.sleep(60)
    if arg == "raise":
        raise RuntimeError("connect boom")
    open_fds.add(fd)
    if arg == "baddisc":
        bad_disconnect.add(fd)
    write(fd, b"hi\n")
    return True


def on_read(fd, data):
    if data.startswith(b"boom"):
        raise RuntimeError("boom in on_read")
    if data.startswith(b"quit"):
        write(fd, b"bye\n")
        shutdown(fd, SHUT_RDWR)
        return
    if data.startswith(b"big "):
        write(fd, b"x" * int(data[4:]))
        return
    if data.startswith(b"bigquit "):
        write(fd, b"x" * int(data[8:]))
        shutdown(fd, SHUT_RDWR)
        return
    if data.startswith(b"half"):
        write(fd, b"half\n")
        shutdown(fd, SHUT_WR)
        half_closed.add(fd)
        return
    if fd in half_closed:
        Print("write after SHUT_WR: %d\n", write(fd, data))
        return
    write(fd, data)


def on_writable(fd):
    write(fd, b"[drained]")


def on_disconnect(fd, reason):
    open_fds.discard(fd)
    half_closed.discard(fd)
    reasons[reason] = reasons.get(reason, 0) + 1
    Print("disconnect %d %s\n", fd, reason)
    if fd in bad_disconnect:
        bad_disconnect.discard(fd)
        raise RuntimeError("boom in on_disconnect")


def on_get(url, arg):
    return 200, "application/json", json.dumps({"open": len(open_fds), "reasons": reasons})


Print("testprog loaded, %s\n", "top-level style")
set_backend_get(on_get)
set_socket_on_connect(on_connect)
set_socket_on_read(on_read)
set_socket_on_writable(on_writable)
set_socket_on_disconnect(on_disconnect)
wait_for_requests()
'''

NOWAIT = 'from kvm_api import Print\nPrint("loaded but not waiting\\n")\n'
BROKEN = 'raise ImportError("no such thing")\n'
SLOWLOAD = 'import time\ntime.sleep(30)\n'


@pytest.fixture(scope="module")
def progdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("programs")
    (d / "testprog.py").write_text(TESTPROG)
    (d / "nowait.py").write_text(NOWAIT)
    (d / "broken.py").write_text(BROKEN)
    (d / "slowload.py").write_text(SLOWLOAD)
    return d


class ProgramOutput:
    """What program processes wrote to the log stream (our fd 2, which they inherit)."""

    def __init__(self, capfd: pytest.CaptureFixture) -> None:
        self._capfd = capfd
        self._text = ""

    def lines(self) -> list[str]:
        self._text += self._capfd.readouterr().err
        return self._text.splitlines()


@pytest.fixture(autouse=True)
def program_output(capfd: pytest.CaptureFixture):
    """Programs run with ResourceWarning on: an fd left to the garbage collector shows in the log."""
    out = ProgramOutput(capfd)
    yield out
    leaks = [line for line in out.lines() if "ResourceWarning" in line]
    assert not leaks


@pytest.fixture
def listener():
    srv = socket.create_server(("127.0.0.1", 0), backlog=128)
    yield srv
    srv.close()


def run(coro, timeout: float = 25.0):
    return asyncio.run(asyncio.wait_for(coro, timeout))


def pair(listener: socket.socket) -> tuple[socket.socket, socket.socket, str]:
    """(client, server side, remote) of a fresh TCP connection."""
    client = socket.create_connection(listener.getsockname())
    server, addr = listener.accept()
    client.settimeout(5)
    server.settimeout(5)
    return client, server, f"{addr[0]}:{addr[1]}"


def recv_exact(sock: socket.socket, n: int) -> bytes:
    buf = b""
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise EOFError(f"EOF after {len(buf)} of {n} bytes: {buf[:80]!r}")
        buf += chunk
    return buf


def recv_all(sock: socket.socket) -> bytes:
    """Everything until EOF."""
    buf = b""
    while chunk := sock.recv(65536):
        buf += chunk
    return buf


def nfds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def children_running(program: str) -> list[int]:
    """Live child processes of this test process that run `program`."""
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(") ", 1)[1].split()
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                cmdline = f.read()
        except OSError:
            continue
        if fields[0] != "Z" and int(fields[1]) == os.getpid() and f"{program}.py".encode() in cmdline:
            pids.append(int(entry))
    return pids


def gone(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ")[1].startswith("Z")   # a zombie is gone too
    except FileNotFoundError:
        return True


async def stats(pm: ProgramManager) -> dict:
    status, ctype, body = await pm.backend_get("testprog", "/stats")
    assert (status, ctype) == (200, "application/json")
    return json.loads(body)


async def stats_when(pm: ProgramManager, ready, what: str, timeout: float = DEADLINE) -> dict:
    """stats(pm) once ready(stats) holds (the program hears of a closed connection when it can)."""
    deadline = time.monotonic() + timeout
    while True:
        s = await stats(pm)
        if ready(s):
            return s
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout} s: {what} ({s})")
        await asyncio.sleep(0.01)


def steal_pending(pm: ProgramManager, name: str) -> bool:
    """A steal was sent to program `name`'s process and is not answered yet."""
    prog = pm._programs.get(name)
    return prog is not None and bool(prog.pending)


def bytes_waiting(sock: socket.socket) -> bool:
    try:
        return bool(sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT))
    except BlockingIOError:
        return False


def test_hello_accepts_and_answers_each_request(listener, program_output):

    async def main():
        pm = ProgramManager([BUNDLED_DIR])
        try:
            client, server, remote = pair(listener)
            assert await pm.steal("hello", server, remote, "/tcp") is True
            server.close()
            assert recv_exact(client, len(HELLO)) == HELLO
            client.sendall(REQUEST)                                   # answered by on_read
            assert recv_exact(client, len(HELLO)) == HELLO
            client.close()
            assert await pm.backend_get("hello", "/") == (200, "text/plain", b"Hello World!\n")
        finally:
            await pm.close()
        return remote

    remote = run(main())
    lines = program_output.lines()
    assert "hello: Hello Compute World!" in lines
    assert any(m.startswith("hello: * FD ") and m.endswith(f" connected. Remote: {remote} Arg: /tcp")
               for m in lines), lines
    assert any(m.startswith("hello: * FD ") and " data: 0x" in m and m.endswith(f", {len(REQUEST)} bytes")
               for m in lines), lines


def test_print_lines_are_written_before_the_server_hears_more(listener, program_output):
    # The loop writes Print lines in batches, but always before a message to the server: when the
    # server has the answer, the lines printed before it are in the log.
    async def main():
        pm = ProgramManager([BUNDLED_DIR])
        try:
            client, server, remote = pair(listener)
            assert await pm.steal("hello", server, remote, "/tcp") is True
            server.close()
            assert any(" connected. Remote: " in m for m in program_output.lines())
            assert recv_exact(client, len(HELLO)) == HELLO
            client.sendall(REQUEST)
            assert recv_exact(client, len(HELLO)) == HELLO           # printed " data: " first
            assert await pm.backend_get("hello", "/") == (200, "text/plain", b"Hello World!\n")
            assert any(" data: 0x" in m for m in program_output.lines())
            client.close()
        finally:
            await pm.close()

    run(main())


def test_a_running_steal_process_is_known_without_a_file_look_up(listener, monkeypatch):
    from types import SimpleNamespace

    from vmods import tinykvm

    looked_up = []
    monkeypatch.setattr(tinykvm, "find_program", lambda name, dirs: looked_up.append(name) or BUNDLED_DIR)

    async def main():
        pm = ProgramManager([BUNDLED_DIR])
        ctx = SimpleNamespace(server=SimpleNamespace(programs=pm), vcl=SimpleNamespace(filename=None))
        try:
            assert tinykvm._known(ctx, "hello") and looked_up == ["hello"]      # not running yet
            client, server, remote = pair(listener)
            assert await pm.steal("hello", server, remote, "/tcp") is True
            server.close()
            client.close()
            assert tinykvm._known(ctx, "hello") and looked_up == ["hello"]      # per steal: no stat()
        finally:
            await pm.close()
        assert tinykvm._known(ctx, "hello") and looked_up == ["hello", "hello"]

    run(main())


def test_refused_connection_stays_with_server(listener, progdir):
    async def main():
        pm = ProgramManager([progdir])
        try:
            client, server, remote = pair(listener)
            assert await pm.steal("testprog", server, remote, "refuse") is False
            server.sendall(b"still mine")
            assert recv_exact(client, 10) == b"still mine"
            client.sendall(b"ping")
            assert recv_exact(server, 4) == b"ping"
            # An exception in on_connect is a refusal too.
            assert await pm.steal("testprog", server, remote, "raise") is False
            server.sendall(b"again")
            assert recv_exact(client, 5) == b"again"
            assert (await stats(pm))["open"] == 0
        finally:
            await pm.close()

    run(main())


def test_prebuffer_is_the_first_on_read(listener, progdir):
    async def main():
        pm = ProgramManager([progdir])
        try:
            client, server, remote = pair(listener)
            client.sendall(b"-later")   # already in the socket when the program gets it
            wait_for(lambda: bytes_waiting(server), what="the client's bytes in the socket")
            assert await pm.steal("testprog", server, remote, "", prebuffer=b"early") is True
            server.close()
            assert recv_exact(client, 3 + 5 + 6) == b"hi\nearly-later"
        finally:
            await pm.close()

    run(main())


def test_large_prebuffer_and_large_writes(listener, progdir):
    async def main():
        pm = ProgramManager([progdir])
        try:
            client, server, remote = pair(listener)
            pre = bytes(range(256)) * 1024   # several control-channel frames
            assert await pm.steal("testprog", server, remote, "", prebuffer=pre) is True
            server.close()
            assert recv_exact(client, 3 + len(pre)) == b"hi\n" + pre
            # A write the socket cannot take at once: buffered, then on_writable once drained.
            n = 8 * 1024 * 1024
            client.sendall(b"big %d" % n)
            await asyncio.sleep(0.2)
            got = recv_exact(client, n + len(b"[drained]"))
            assert got.endswith(b"x[drained]") and got.count(b"x") == n
        finally:
            await pm.close()

    run(main())


def test_concurrent_steals_with_large_prebuffers(listener, progdir):
    """Many steals at once fill the control channel: messages wait, never interleave."""
    async def main():
        pm = ProgramManager([progdir])
        try:
            pairs = [pair(listener) for _ in range(40)]
            pres = [bytes([i]) * (150_000 + i) for i in range(len(pairs))]
            results = await asyncio.gather(*(
                pm.steal("testprog", server, remote, "", prebuffer=pre)
                for (_, server, remote), pre in zip(pairs, pres, strict=True)))
            assert results == [True] * len(pairs)
            for (client, server, _), pre in zip(pairs, pres, strict=True):
                server.close()
                assert recv_exact(client, 3 + len(pre)) == b"hi\n" + pre
                client.close()
        finally:
            await pm.close()

    run(main())


def test_exception_in_callback_closes_only_that_connection(listener, progdir, program_output):

    async def main():
        pm = ProgramManager([progdir])
        try:
            conns = []
            for _ in range(2):
                client, server, remote = pair(listener)
                assert await pm.steal("testprog", server, remote, "") is True
                server.close()
                assert recv_exact(client, 3) == b"hi\n"
                conns.append(client)
            a, b = conns
            a.sendall(b"boom")
            assert recv_all(a) == b""                 # closed by the program
            b.sendall(b"still here")
            assert recv_exact(b, 10) == b"still here"
            s = await stats(pm)
            assert s["open"] == 1 and s["reasons"] == {"Error": 1}
            b.close()
            a.close()
        finally:
            await pm.close()

    run(main())
    messages = "\n".join(program_output.lines())
    assert "testprog: RuntimeError: boom in on_read" in messages
    assert "testprog: Traceback (most recent call last):" in messages
    assert "Error" in messages


def test_program_shutdown_and_half_close(listener, progdir):
    async def main():
        pm = ProgramManager([progdir])
        try:
            client, server, remote = pair(listener)
            assert await pm.steal("testprog", server, remote, "") is True
            server.close()
            client.sendall(b"quit")
            assert recv_all(client) == b"hi\nbye\n"   # buffered output first, then FIN
            client.close()

            client, server, remote = pair(listener)
            assert await pm.steal("testprog", server, remote, "") is True
            server.close()
            client.sendall(b"echo")
            client.shutdown(socket.SHUT_WR)           # the program still answers a half-closed peer
            assert recv_all(client) == b"hi\necho"
            client.close()
            s = await stats_when(pm, lambda s: s["open"] == 0, "the program hearing of the close")
            assert s == {"open": 0, "reasons": {"Disconnected": 2}}
        finally:
            await pm.close()

    run(main())


def test_program_half_close_and_linger(listener, progdir, program_output, monkeypatch):
    # the linger is long enough that "still draining" holds however slow the machine
    monkeypatch.setenv("KVM_API_LINGER", "3.0")

    async def main():
        pm = ProgramManager([progdir])
        try:
            # shutdown(fd, SHUT_WR): FIN after the output; reading goes on; write() is refused.
            client, server, remote = pair(listener)
            assert await pm.steal("testprog", server, remote, "") is True
            server.close()
            client.sendall(b"half")
            assert recv_all(client) == b"hi\nhalf\n"
            client.sendall(b"more")
            await asyncio.sleep(0.1)
            assert (await stats(pm))["open"] == 1
            client.close()
            # SHUT_RDWR with more output than the peer reads: closed after the linger time anyway.
            client, server, remote = pair(listener)
            assert await pm.steal("testprog", server, remote, "") is True
            server.close()
            client.sendall(b"bigquit 20000000")
            await asyncio.sleep(0.2)                    # (more time would only bring the linger nearer)
            assert (await stats(pm))["open"] == 1       # still draining
            s = await stats_when(pm, lambda s: s["open"] == 0, "the linger's end")
            assert s == {"open": 0, "reasons": {"Disconnected": 2}}
            client.close()
        finally:
            await pm.close()

    run(main())
    assert "testprog: write after SHUT_WR: -1" in program_output.lines()


def test_killed_program_closes_its_sockets_and_restarts(listener, progdir):
    async def main():
        pm = ProgramManager([progdir])
        try:
            clients = []
            for _ in range(3):
                client, server, remote = pair(listener)
                assert await pm.steal("testprog", server, remote, "") is True
                server.close()
                assert recv_exact(client, 3) == b"hi\n"
                clients.append(client)
            pid = pm.pid("testprog")
            os.kill(pid, signal.SIGKILL)
            for c in clients:
                assert recv_all(c) == b""             # the kernel closed the program's fds
                c.close()
            await async_wait_for(lambda: pm.pid("testprog") is None, what="the manager seeing the death")
            client, server, remote = pair(listener)
            assert await pm.steal("testprog", server, remote, "") is True
            server.close()
            assert pm.pid("testprog") not in (None, pid)
            assert recv_exact(client, 3) == b"hi\n"
            client.close()

            # A program that dies while a steal waits: that steal raises ProgramError.
            client, server, remote = pair(listener)
            task = asyncio.create_task(pm.steal("testprog", server, remote, "hang"))
            await async_wait_for(lambda: steal_pending(pm, "testprog"), what="the steal sent")
            os.kill(pm.pid("testprog"), signal.SIGKILL)
            with pytest.raises(ProgramError, match="testprog"):
                await task
            server.sendall(b"mine")                   # the server still has the connection
            assert recv_exact(client, 4) == b"mine"
            server.close()
            client.close()
        finally:
            await pm.close()

    base = nfds(os.getpid())
    run(main())
    # Two dead processes and a third closed: their pipes and control channels are all closed.
    assert abs(nfds(os.getpid()) - base) <= 2


def test_hung_on_connect_times_out_without_blocking_the_loop(listener, progdir):
    async def main():
        pm = ProgramManager([progdir, BUNDLED_DIR], timeout=1.0)
        ticks = 0

        async def ticker():
            nonlocal ticks
            while True:
                await asyncio.sleep(0.01)
                ticks += 1

        t = asyncio.create_task(ticker())
        try:
            client, server, remote = pair(listener)
            assert await pm.steal("testprog", server, remote, "") is True   # started, one fd
            server.close()
            hung_pid = pm.pid("testprog")
            client2, server2, remote2 = pair(listener)
            start = time.monotonic()
            hung = asyncio.create_task(pm.steal("testprog", server2, remote2, "hang"))
            await async_wait_for(lambda: steal_pending(pm, "testprog"), what="the hanging steal sent")
            # Meanwhile the server serves: another program gets a connection.
            c3, s3, r3 = pair(listener)
            assert await pm.steal("hello", s3, r3, "") is True
            s3.close()
            assert recv_exact(c3, len(HELLO)) == HELLO
            assert await hung is False
            elapsed = time.monotonic() - start
            assert 0.9 < elapsed < 5.0
            assert ticks > 20                         # the loop ran all along (blocked: 0)
            assert gone(hung_pid) and pm.pid("testprog") is None
            assert recv_all(client) == b"hi\n"        # the killed program's connections closed
            server2.sendall(b"kept")                  # the hung one is still the server's
            assert recv_exact(client2, 4) == b"kept"
            client3, server3, remote3 = pair(listener)
            assert await pm.steal("testprog", server3, remote3, "") is True   # restarted
            assert recv_exact(client3, 3) == b"hi\n"
        finally:
            t.cancel()
            await pm.close()

    run(main())


def test_program_without_wait_for_requests_fails_clearly(listener, progdir, program_output):

    async def main():
        pm = ProgramManager([progdir])
        try:
            client, server, remote = pair(listener)
            with pytest.raises(ProgramError, match=r"^program 'nowait' did not call wait_for_requests\(\)$"):
                await pm.steal("nowait", server, remote, "")
            with pytest.raises(ProgramError, match=r"program 'broken' failed while loading: ImportError: no such thing"):
                await pm.steal("broken", server, remote, "")
            with pytest.raises(ProgramError, match="program 'missing' not found"):
                await pm.steal("missing", server, remote, "")
            assert pm.running() == {}
            server.sendall(b"ok")
            assert recv_exact(client, 2) == b"ok"
        finally:
            await pm.close()

    run(main())
    assert "nowait: loaded but not waiting" in program_output.lines()


def test_slow_load_times_out_and_cancel_leaves_no_process(listener, progdir):
    async def main():
        pm = ProgramManager([progdir], load_timeout=0.5)
        try:
            client, server, remote = pair(listener)
            with pytest.raises(ProgramError, match=r"did not call wait_for_requests\(\) within 0.5 s"):
                await pm.steal("slowload", server, remote, "")
            assert children_running("slowload") == []
            pm.load_timeout = 10
            task = asyncio.create_task(pm.steal("slowload", server, remote, ""))
            await async_wait_for(lambda: children_running("slowload"), what="the slow loader started")
            assert len(children_running("slowload")) == 1
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            await async_wait_for(lambda: not children_running("slowload"), interval=0.02,
                                 what="the cancelled loader gone")
            server.sendall(b"ok")
            assert recv_exact(client, 2) == b"ok"
        finally:
            await pm.close()

    run(main())


@pytest.mark.parametrize("name", ["../hello", "a/b", ".hidden", "..", "", "x y", "hello.py/", "é", "a\0b"])
def test_bad_names_are_refused(name, progdir):
    with pytest.raises(ValueError, match="invalid program name"):
        find_program(name, [progdir])

    async def main():
        pm = ProgramManager([progdir])
        try:
            with pytest.raises(ProgramError, match="invalid program name"):
                await pm.steal(name, socket.socket(), "", "")
            assert pm.running() == {}
        finally:
            await pm.close()

    run(main())


def test_find_program_order(tmp_path):
    first, second = tmp_path / "first", tmp_path / "second"
    first.mkdir()
    second.mkdir()
    (second / "p.py").write_text("")
    assert find_program("p", [first, second]) == second / "p.py"
    (first / "p.py").write_text("")
    assert find_program("p", [first, second]) == first / "p.py"
    assert find_program("q", [first, second]) is None
    (first / "dir.py").mkdir()                        # not a file: skipped
    assert find_program("dir", [first, second]) is None
    # The server's order: the VCL file's directory, then the bundled programs.
    dirs = default_search_dirs(tmp_path / "main.vcl")
    assert dirs == [tmp_path, BUNDLED_DIR]
    assert find_program("hello", dirs) == BUNDLED_DIR / "hello.py"
    (tmp_path / "hello.py").write_text("")
    assert find_program("hello", dirs) == tmp_path / "hello.py"


def test_close_leaves_no_process(listener, progdir):
    async def main():
        pm = ProgramManager([progdir, BUNDLED_DIR])
        clients = []
        for name in ("hello", "testprog"):
            client, server, remote = pair(listener)
            assert await pm.steal(name, server, remote, "") is True
            server.close()
            clients.append(client)
        pids = list(pm.running().values())
        assert len(pids) == 2
        await pm.close()
        assert pm.running() == {}
        with pytest.raises(ProgramError, match="closed"):
            await pm.steal("hello", socket.socket(), "", "")
        for c in clients:
            c.settimeout(2)
            assert recv_all(c) in (HELLO, b"hi\n")
        return pids

    for pid in run(main()):
        assert gone(pid)


def test_host_exits_when_the_server_goes_even_if_a_callback_hangs(listener, progdir):
    """No program outlives the server: the host watches its control channel."""
    parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    proc = subprocess.Popen(
        [sys.executable, "-m", "kvm_api.host", "--name", "testprog", "--control-fd",
         str(child.fileno()), str(progdir / "testprog.py")],
        pass_fds=[child.fileno()], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)})
    child.close()
    try:
        parent.settimeout(10)
        assert b'"op":"ready"' in parent.recv(65536)
        base = nfds(proc.pid)
        client, server, remote = pair(listener)
        header = json.dumps({"op": "steal", "id": 1, "remote": remote, "arg": "hang", "n": 0}).encode()
        socket.send_fds(parent, [struct.pack(">I", len(header)) + header], [server.fileno()])
        server.close()
        # the host has taken the socket (one more descriptor): on_connect, which hangs, comes next
        wait_for(lambda: nfds(proc.pid) > base, what="the host receiving the stolen socket")
        start = time.monotonic()
        parent.close()
        assert proc.wait(timeout=5) == 0
        assert time.monotonic() - start < 4
        assert recv_all(client) == b""
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def end_connection(mode: str, client: socket.socket) -> None:
    """End a stolen connection the way `mode` says, from the client side."""
    if mode == "client-rst":
        client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    elif mode == "half-close":
        client.shutdown(socket.SHUT_WR)
        assert recv_all(client) == b""
    elif mode == "program-shutdown":
        client.sendall(b"quit")
        assert recv_all(client) == b"bye\n"
    elif mode == "exception":
        client.sendall(b"boom")
        assert recv_all(client) == b""
    client.close()


def test_no_fd_leak_over_1000_connections(listener, progdir):
    """Every fd the program receives is closed exactly once, however the connection ends."""
    modes = ["client-close", "client-rst", "half-close", "program-shutdown", "refused", "exception",
             "disconnect-raises"]

    async def main():
        pm = ProgramManager([progdir])
        try:
            client, server, remote = pair(listener)       # warm up: the process and its pipes
            assert await pm.steal("testprog", server, remote, "") is True
            server.close()
            assert recv_exact(client, 3) == b"hi\n"    # unread data would make close() send RST
            client.close()
            await stats_when(pm, lambda s: s["open"] == 0, "the warm-up connection's close")
            pid = pm.pid("testprog")
            base_self, base_prog = nfds(os.getpid()), nfds(pid)
            peak_prog = 0
            accepted = 0
            for batch in range(10):                     # 100 connections open at once, then ended
                held = []
                for i in range(batch * 100, batch * 100 + 100):
                    mode = modes[i % len(modes)]
                    client, server, remote = pair(listener)
                    arg = {"refused": "refuse", "disconnect-raises": "baddisc"}.get(mode, "")
                    ok = await pm.steal("testprog", server, remote, arg)
                    server.close()                      # refused: the "server" ends it here
                    assert ok is (mode != "refused")
                    if ok:
                        accepted += 1
                        assert recv_exact(client, 3) == b"hi\n"
                    held.append((mode, client))
                peak_prog = max(peak_prog, nfds(pid))
                for mode, client in held:
                    end_connection(mode, client)
            s = await stats_when(pm, lambda s: s["open"] == 0 and sum(s["reasons"].values()) == accepted + 1,
                                 "the last closes reaching the program", timeout=20)
            assert pm.pid("testprog") == pid            # one process served them all
            return base_self, base_prog, nfds(os.getpid()), nfds(pid), peak_prog, s, accepted
        finally:
            await pm.close()

    base_self, base_prog, end_self, end_prog, peak_prog, s, accepted = run(main(), timeout=60)
    print(f"fds: test process {base_self} -> {end_self}, program {base_prog} -> {end_prog} "
          f"(peak {peak_prog}); disconnect reasons {s['reasons']}")
    assert peak_prog >= base_prog + 80                  # the program really held them at once
    assert abs(end_self - base_self) <= 2
    assert abs(end_prog - base_prog) <= 2
    assert s["open"] == 0
    expected = {m: sum(1 for i in range(1000) if modes[i % len(modes)] == m) for m in modes}
    assert accepted == 1000 - expected["refused"]
    # on_disconnect exactly once per accepted connection (+1: the warm-up), with the right reason
    assert s["reasons"] == {
        "Reset": expected["client-rst"],
        "Error": expected["exception"],
        "Disconnected": (expected["client-close"] + expected["half-close"] + expected["program-shutdown"]
                         + expected["disconnect-raises"] + 1),
    }
