"""The admin CLI's security, against real cacheserver processes on loopback (issue 8, items 1 and 6).

Authentication is on by default (-T/-M without -S make a private secret file, as varnishd does), only
auth/help/ping/quit are served before it (anything else is answered and the connection closed, as
varnishd 7.1 does), input is bounded (lines, here documents) and reads time out after cli_timeout.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import stat
import subprocess
import threading
import time
from pathlib import Path

import pytest
from serverproc import ServerProcess

from cacheserver.admin import MAX_HEREDOC, MAX_LINE, PREAUTH_MAX_LINE, auth_response


class RawCli:
    """A blocking CLI client; `result()` raises EOFError when the server closed the connection."""

    def __init__(self, host: str, port: int) -> None:
        self.sock = socket.create_connection((host, port), timeout=10)
        self.buf = b""

    def _fill(self, n: int, timeout: float) -> None:
        self.sock.settimeout(timeout)
        while len(self.buf) < n:
            try:
                chunk = self.sock.recv(65536)
            except ConnectionResetError:
                chunk = b""
            if not chunk:
                raise EOFError(self.buf)
            self.buf += chunk

    def result(self, timeout: float = 10) -> tuple[int, str]:
        self._fill(13, timeout)
        status, length = int(self.buf[:3]), int(self.buf[4:12])
        self._fill(13 + length + 1, timeout)
        body, self.buf = self.buf[13:13 + length], self.buf[13 + length + 1:]
        return status, body.decode("utf-8", "replace")

    def ask(self, line: str, timeout: float = 10) -> tuple[int, str]:
        self.sock.sendall(line.encode() + b"\n")
        return self.result(timeout)

    def closed(self, timeout: float = 10) -> bool:
        """True once the server closed the connection (EOF or reset) within `timeout`; what it still
        sent before closing is read and dropped."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                self._fill(len(self.buf) + 1, max(deadline - time.monotonic(), 0.001))
            except EOFError:
                return True
            except (socket.timeout, TimeoutError):
                return False

    def login(self, secret: bytes) -> None:
        status, challenge = self.result()
        assert status == 107, challenge
        status, banner = self.ask("auth " + auth_response(challenge[:32], secret))
        assert status == 200 and "Varnish Cache CLI 1.0" in banner, (status, banner)

    def close(self) -> None:
        self.sock.close()


def start(*args: str, env: dict[str, str] | None = None) -> tuple[ServerProcess, str, int]:
    proc = ServerProcess("-b", "127.0.0.1:9", "-T", "127.0.0.1:0", *args, env=env)
    line = proc.wait_for_output(r"Admin CLI on ")
    host, port = line.split("Admin CLI on ")[1].split()[:2]
    return proc, host, int(port)


@pytest.fixture
def secret(tmp_path: Path) -> Path:
    p = tmp_path / "secret"
    p.write_bytes(b"a shared secret\n")
    p.chmod(0o600)
    return p


def vm_hwm(pid: int) -> int:
    """Peak resident set size of a process, in bytes (VmHWM)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM")


def flood(sock: socket.socket, head: bytes, piece: bytes, total: int) -> int:
    """Send head, then piece repeatedly up to `total` bytes, until the peer stops us; bytes sent."""
    sent = 0
    sock.settimeout(20)
    try:
        sock.sendall(head)
        chunk = piece * max(1, (1 << 20) // len(piece))
        while sent < total:
            sock.sendall(chunk)
            sent += len(chunk)
    except (BrokenPipeError, ConnectionResetError, socket.timeout, TimeoutError):
        pass
    return sent


# ---- item 1: authentication by default ---------------------------------------------------------------

def test_T_without_S_or_n_challenges_with_a_private_generated_secret(tmp_path):
    run = tmp_path / "run"
    run.mkdir(mode=0o700)
    env = dict(os.environ, XDG_RUNTIME_DIR=str(run))
    proc, host, port = start(env=env)
    try:
        work = run / "cacheserver" / socket.gethostname()
        path = work / "_.secret"
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        assert stat.S_IMODE(work.stat().st_mode) & 0o077 == 0
        assert len(path.read_bytes()) >= 32
        assert any(str(path) in line for line in proc.output)     # the operator is told where it is
        cli = RawCli(host, port)
        status, text = cli.result()
        assert status == 107 and "Authentication required." in text
        assert cli.ask("param.set default_ttl 7")[0] == 101       # refused, connection closed
        assert cli.closed()
        cli = RawCli(host, port)
        cli.login(path.read_bytes())
        assert cli.ask("param.set default_ttl 7")[0] == 200
        assert "Value is: 7.000" in cli.ask("param.show default_ttl")[1]
        cli.close()
    finally:
        proc.stop()


def test_unauthenticated_requests_are_refused_and_the_connection_closed(secret):
    proc, host, port = start("-S", str(secret))
    try:
        for line in ("param.set default_ttl 7", "vcl.inline evil << EOF", "banner", "status",
                     'vcl.inline evil "vcl 4.1; backend b none;"', "start", "ping 1 2 3"):
            cli = RawCli(host, port)
            assert cli.result()[0] == 107
            status, _ = cli.ask(line)
            assert status in (101, 105), (line, status)
            assert cli.closed(), line
        cli = RawCli(host, port)
        assert cli.result()[0] == 107
        assert cli.ask("ping")[1].startswith("PONG ")            # allowed before auth, as varnishd
        assert "vcl.inline" in cli.ask("help")[1]
        assert cli.ask("help ping")[0] == 200
        assert cli.ask("auth " + "0" * 64) == (500, "")          # a wrong answer closes
        assert cli.closed()
        cli = RawCli(host, port)
        cli.login(secret.read_bytes())
        assert "Value is: 120.000 [seconds] (default)" in cli.ask("param.show default_ttl")[1]
        assert "evil" not in cli.ask("vcl.list")[1]
        assert cli.ask("auth " + "0" * 64) == (500, "")          # as varnishd: once is enough
        assert cli.closed()
    finally:
        proc.stop()


def test_reverse_cli_challenges_with_a_private_secret(tmp_path):
    lsock = socket.socket()
    lsock.bind(("127.0.0.1", 0))
    lsock.listen(1)
    lsock.settimeout(20)
    work = tmp_path / "work"
    proc = ServerProcess("-b", "127.0.0.1:9", "-n", str(work), "-M", "127.0.0.1 %d" % lsock.getsockname()[1])
    try:
        conn, _ = lsock.accept()
        cli = RawCli.__new__(RawCli)
        cli.sock, cli.buf = conn, b""
        assert stat.S_IMODE((work / "_.secret").stat().st_mode) == 0o600
        cli.login((work / "_.secret").read_bytes())
        assert cli.ask("status") == (200, "Child in state running")
        cli.close()
    finally:
        lsock.close()
        proc.stop()


def test_secret_generation_follows_no_planted_symlink_and_refuses_a_shared_work_dir(tmp_path):
    work = tmp_path / "work"
    work.mkdir()
    target = tmp_path / "target"
    target.write_bytes(b"not yours")
    (work / "_.secret").symlink_to(target)
    proc, host, port = start("-n", str(work))
    try:
        assert target.read_bytes() == b"not yours"
        assert not (work / "_.secret").is_symlink()
        assert stat.S_IMODE((work / "_.secret").stat().st_mode) == 0o600
    finally:
        proc.stop()
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)
    with pytest.raises(RuntimeError, match="writable by others"):
        start("-n", str(shared))


def test_S_none_turns_authentication_off_with_varnishds_warning():
    proc, host, port = start("-S", "none")
    try:
        assert any("Warning: CLI authentication disabled." in line for line in proc.output)
        cli = RawCli(host, port)
        assert cli.result()[0] == 200
        assert cli.ask("status")[0] == 200
        # nothing to authenticate against: varnishd answers, and keeps the session
        assert cli.ask("auth " + "0" * 64) == (300, "Secret file not configured\n")
        assert cli.ask("ping")[0] == 200
        cli.close()
    finally:
        proc.stop()


@pytest.mark.skipif(shutil.which("varnishadm") is None, reason="varnishadm is not installed")
def test_varnishadm_with_T_and_S(tmp_path):
    run = tmp_path / "run"
    run.mkdir(mode=0o700)
    proc, host, port = start(env=dict(os.environ, XDG_RUNTIME_DIR=str(run)))
    try:
        path = run / "cacheserver" / socket.gethostname() / "_.secret"

        def adm(secret_file: Path, *cmd: str) -> subprocess.CompletedProcess:
            return subprocess.run(["varnishadm", "-t", "10", "-T", f"{host}:{port}", "-S", str(secret_file),
                                   *cmd], capture_output=True, text=True, timeout=30)

        r = adm(path, "ping")
        assert r.returncode == 0 and r.stdout.startswith("PONG "), r
        assert adm(path, "param.set", "default_ttl", "9").returncode == 0
        assert "Value is: 9.000" in adm(path, "param.show", "default_ttl").stdout
        wrong = tmp_path / "wrong"
        wrong.write_bytes(b"guess\n")
        r = adm(wrong, "param.set", "default_ttl", "1")
        assert r.returncode != 0
        assert "Value is: 9.000" in adm(path, "param.show", "default_ttl").stdout
    finally:
        proc.stop()


# ---- item 6: bounded input, before and after auth, and timeouts ------------------------------------------

@pytest.mark.parametrize("head,piece", [
    (b"vcl.inline x << EOF\n", b"a" * 1023 + b"\n"),          # an unterminated here document
    (b"ping ", b"a" * 1024),                                   # one endless line
], ids=["heredoc", "line"])
def test_a_100mb_flood_before_auth_is_cut_off_and_memory_stays_bounded(secret, head, piece):
    proc, host, port = start("-S", str(secret))
    try:
        cli = RawCli(host, port)
        assert cli.result()[0] == 107
        assert cli.ask("ping")[0] == 200
        before = vm_hwm(proc.proc.pid)
        sent = flood(cli.sock, head, piece, 100 << 20)
        assert cli.closed(), "the server should close a flooding unauthenticated connection"
        grown = vm_hwm(proc.proc.pid) - before
        assert grown < 50 << 20, f"peak RSS grew by {grown >> 20} MB after {sent >> 20} MB"
        cli = RawCli(host, port)
        cli.login(secret.read_bytes())                          # the CLI still works
        cli.close()
    finally:
        proc.stop()


def test_preauth_lines_are_short_and_auth_fits():
    assert len("auth " + "0" * 64) <= PREAUTH_MAX_LINE


def test_after_auth_a_big_vcl_loads_and_oversized_input_is_cut_off(secret):
    proc, host, port = start("-S", str(secret))
    try:
        cli = RawCli(host, port)
        cli.login(secret.read_bytes())
        filler = "x" * (1 << 20)
        status, text = cli.ask('vcl.inline big "vcl 4.1;\\nbackend default none;\\n# ' + filler + '\\n"', 60)
        assert status == 200, text
        cli.sock.sendall(b"vcl.inline big2 << EOF\nvcl 4.1;\nbackend default none;\n# "
                         + filler.encode() + b"\nEOF\n")
        assert cli.result(60)[0] == 200
        # a line longer than MAX_LINE closes the connection
        sent = flood(cli.sock, b"ping ", b"a" * 4096, MAX_LINE + (2 << 20))
        assert cli.closed()
        assert sent <= MAX_LINE + (2 << 20)
        # so does a here document longer than MAX_HEREDOC
        cli = RawCli(host, port)
        cli.login(secret.read_bytes())
        before = vm_hwm(proc.proc.pid)
        flood(cli.sock, b"vcl.inline x << EOF\n", b"b" * 1023 + b"\n", MAX_HEREDOC + (8 << 20))
        assert cli.closed()
        assert vm_hwm(proc.proc.pid) - before < 50 << 20
        cli = RawCli(host, port)
        cli.login(secret.read_bytes())
        assert "big2" in cli.ask("vcl.list")[1]
        cli.close()
    finally:
        proc.stop()


def test_cli_timeout_closes_idle_unauthenticated_and_stalled_sessions(secret):
    proc, host, port = start("-S", str(secret), "-p", "cli_timeout=1")
    try:
        idle = RawCli(host, port)
        assert idle.result()[0] == 107
        authed = RawCli(host, port)
        authed.login(secret.read_bytes())
        stalled = RawCli(host, port)
        stalled.login(secret.read_bytes())
        stalled.sock.sendall(b"pin")                              # half a command, then nothing
        t0 = time.monotonic()
        assert idle.closed(6)
        assert stalled.closed(6)
        assert time.monotonic() - t0 < 6
        time.sleep(0.5)
        assert authed.ask("ping")[0] == 200                       # an idle authenticated session stays
        authed.close()
    finally:
        proc.stop()


def test_a_client_that_never_reads_is_dropped(secret):
    """Answers pile up when a client sends but never reads: after cli_timeout the server drops it
    (its socket leaves the server process; the client may not see the reset while its window is 0)."""
    proc, host, port = start("-S", str(secret), "-p", "cli_timeout=1")
    idle_fds = proc.fd_count()
    cli = RawCli(host, port)
    stop = threading.Event()
    try:
        cli.login(secret.read_bytes())
        cli.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        cli.sock.settimeout(0.5)

        def spam() -> None:
            while not stop.is_set():
                try:
                    cli.sock.sendall(b"help\n" * 100)
                except (socket.timeout, TimeoutError):
                    continue                    # the server stopped reading: keep trying
                except OSError:
                    return                      # reset by the server
        threading.Thread(target=spam, daemon=True).start()
        deadline = time.monotonic() + 20
        while proc.fd_count() > idle_fds and time.monotonic() < deadline:
            time.sleep(0.2)
        assert proc.fd_count() == idle_fds, "the server kept the connection of a client that does not read"
    finally:
        stop.set()
        cli.close()
        proc.stop()


def test_debug_panic_master_aborts_the_server_as_varnishds_manager_does():
    # varnishd 7.1.1: the manager asserts, prints where, and dies of SIGABRT (exit status 134); the
    # CLI connection gets no answer
    proc, host, port = start("-S", "none")
    try:
        cli = RawCli(host, port)
        assert cli.result()[0] == 200
        cli.sock.sendall(b"debug.panic.master\n")
        assert cli.closed()
        assert proc.proc.wait(20) == -signal.SIGABRT
        proc.stop()
        assert "Assert error in mcf_panic(), mgt/mgt_cli.c line 112:\n" in proc.output[-1]
        assert '  Condition((strcmp("", "You asked for it")) == 0) not true.' in proc.output[-1]
    finally:
        proc.stop()
