"""varnish vNAME: launch varnishd (ours or the real one) and drive it over the -M CLI like varnishtest."""
from __future__ import annotations

import fnmatch
import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from typing import TYPE_CHECKING

from .cli_client import CliConnection, auth_response
from .errors import TestFailure
from .log import EntityLog
from .pcre import pcre

if TYPE_CHECKING:
    from .context import TestContext

NONSENSE = "%XJEIFLH|)Xspa8P"
CLIS_OK, CLIS_PARAM, CLIS_CANT, CLIS_AUTH = 200, 106, 300, 107
# The CLI command our cacheserver offers for counters (real varnishd: varnishstat).
COUNTERS_CLI = "counters.list"
_REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class Varnish:
    def __init__(self, ctx: TestContext, name: str) -> None:
        if not name.startswith("v"):
            raise TestFailure(f"Varnish name must start with 'v' (got {name})")
        self.ctx = ctx
        self.name = name
        self.log = EntityLog(ctx.log, name)
        self.workdir = os.path.join(ctx.tmpdir, name)
        shutil.rmtree(self.workdir, ignore_errors=True)
        os.makedirs(self.workdir)
        os.chmod(self.workdir, 0o755)  # varnishd drops privileges and must still reach its workdir
        self.args: list[str] = []
        self.has_a_arg = False
        self.jail = ""
        self.proto: str | None = None
        self.syntax = 4.1
        self.vcl_nbr = 0
        self.proc: subprocess.Popen | None = None
        self.cli: CliConnection | None = None
        self.expect_exit = 0
        self.real = ctx.varnishd is not None
        ctx.macros.define(f"{name}_name", self.workdir)  # varnishtest: -n argument for varnishadm/stat
        self._out_thread: threading.Thread | None = None

    # ---- process ------------------------------------------------------------
    def _varnishd_cmd(self) -> str:
        if self.real:
            return shlex.quote(self.ctx.varnishd)
        return f"{shlex.quote(sys.executable)} -m cacheserver"

    def launch(self) -> None:
        lsock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        lsock.bind(("127.0.0.1", 0))
        lsock.listen(1)
        maddr, mport = lsock.getsockname()[:2]
        parts = [f"cd {shlex.quote(self.ctx.macros.get('pwd') or os.getcwd())} &&", "exec", self._varnishd_cmd()]
        if self.jail:
            parts.append(self.jail)
        parts += ["-d", "-n", self.workdir, "-i", self.name]
        parts += [f"-p {shlex.quote(p)}" for p in self.ctx.varnishd_params]
        parts += ["-l 2m",
                  "-p auto_restart=off", "-p syslog_cli_traffic=off", "-p thread_pool_min=10",
                  "-p debug=+vtc_mode", "-p vsl_mask=+Debug,+H2RxHdr,+H2RxBody",
                  "-p h2_initial_window_size=1m", "-p h2_rx_window_low_water=64k"]
        if not self.has_a_arg:
            parts.append("-a '127.0.0.1:0" + (f",{self.proto}" if self.proto else "") + "'")
        parts += [f"-M '{maddr} {mport}'", f"-P {self.workdir}/varnishd.pid"]
        parts += self.args
        cmd = self.ctx.macros.expand(" ".join(parts))
        self.log(2, "Launch")
        self.log(3, f"CMD: {cmd}")
        env = dict(os.environ)
        if not self.real:
            env["PYTHONPATH"] = _REPO_ROOT + os.pathsep + env.get("PYTHONPATH", "")
        self.proc = subprocess.Popen(["/bin/sh", "-c", cmd], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, env=env)
        self.ctx.cleanups.append(self.kill)
        self.log(3, f"PID: {self.proc.pid}")
        self._out_thread = threading.Thread(target=self._pump_output, daemon=True)
        self._out_thread.start()
        deadline = time.monotonic() + (10.0 if self.real else 30.0)
        lsock.settimeout(0.1)
        conn = None
        while conn is None:
            try:
                conn, _ = lsock.accept()
            except socket.timeout:
                if self.proc.poll() is not None:
                    lsock.close()
                    raise TestFailure(f"FAIL varnishd exited ({self.proc.returncode}) before CLI connection") \
                        from None
                if time.monotonic() > deadline:
                    lsock.close()
                    raise TestFailure("FAIL timeout waiting for CLI connection") from None
        lsock.close()
        conn.setblocking(True)
        self.cli = CliConnection(conn)
        status, challenge = self.cli.read_result()
        if status != CLIS_AUTH:
            raise TestFailure(f"CLI auth demand expected: {status} {challenge}")
        try:
            with open(os.path.join(self.workdir, "_.secret"), "rb") as f:
                secret = f.read()
        except OSError as e:
            raise TestFailure(f"Cannot read secret file: {e}") from e
        status, body = self.ask("auth " + auth_response(challenge.split("\n")[0], secret))
        if status != CLIS_OK:
            raise TestFailure(f"CLI auth command failed: {status} {body}")

    def _pump_output(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        for raw in self.proc.stdout:
            self.log(3, "debug| " + raw.decode("latin-1").rstrip("\n"))

    def kill(self) -> None:
        """Last-resort cleanup when the test ends abnormally."""
        p = self.proc
        if p is None or p.poll() is not None:
            return
        try:
            p.send_signal(signal.SIGTERM)
            p.wait(3)
        except (subprocess.TimeoutExpired, OSError):
            try:
                p.kill()
            except OSError:
                pass

    def _ensure(self) -> None:
        if self.cli is None:
            self.launch()

    def ask(self, cmd: str, quiet: bool = False) -> tuple[int, str]:
        self._ensure()
        assert self.cli is not None
        self.log(4, "CLI TX|" + cmd.replace("\n", "\n" + " " * 6))
        status, body = self.cli.ask(cmd)
        self.log(3, f"CLI RX  {status}")
        if body and not quiet:
            self.log.dump(4, "CLI RX", body)
        return status, body

    # ---- child control ----------------------------------------------------------
    def _status(self) -> str:
        status, body = self.ask("status")
        if status != CLIS_OK:
            self.log(0, f"CLI status command failed: {status} {body}")
        return body.strip()

    def wait_running(self) -> None:
        deadline = time.monotonic() + self.ctx.timeout
        while True:
            st = self._status()
            if st == "Child in state stopped":
                raise TestFailure(f"Child stopped before running: {st}")
            if st == "Child in state running":
                return
            if time.monotonic() > deadline:
                raise TestFailure(f"Child never reached running: {st}")
            time.sleep(0.2)

    def wait_stopped(self) -> None:
        deadline = time.monotonic() + self.ctx.timeout
        while self._status() != "Child in state stopped":
            if time.monotonic() > deadline:
                raise TestFailure("Child never stopped")
            time.sleep(0.2)

    def start(self) -> None:
        self._ensure()
        self.log(2, "Start")
        status, body = self.ask("start")
        if status != CLIS_OK:
            raise TestFailure(f"CLI start command failed: {status} {body}")
        self.wait_running()
        status, body = self.ask("debug.xid 999")
        if status != CLIS_OK:
            raise TestFailure(f"CLI debug.xid command failed: {status} {body}")
        status, body = self.ask("debug.listen_address")
        if status != CLIS_OK:
            raise TestFailure(f"CLI debug.listen_address command failed: {status} {body}")
        self._define_listen_macros(body)

    def _define_listen_macros(self, body: str) -> None:
        first = True
        for line in body.splitlines():
            toks = line.split()
            if len(toks) == 3:
                lname, addr, port = toks
            elif len(toks) == 2:
                lname, (addr, port) = None, toks
            else:
                continue
            if first:
                self.log(2, f"Listen on {addr} {port}")
                self.ctx.macros.define(f"{self.name}_addr", addr)
                self.ctx.macros.define(f"{self.name}_port", port)
                self.ctx.macros.define(f"{self.name}_sock", f"{addr} {port}")
                first = False
            if lname:
                self.ctx.macros.define(f"{self.name}_{lname}_addr", addr)
                self.ctx.macros.define(f"{self.name}_{lname}_port", port)
                self.ctx.macros.define(f"{self.name}_{lname}_sock", f"{addr} {port}")
        if first:
            raise TestFailure(f"No listen address in debug.listen_address output: {body!r}")

    def stop(self) -> None:
        self._ensure()
        for m in ("addr", "port", "sock"):
            self.ctx.macros.undefine(f"{self.name}_{m}")
        self.log(2, "Stop")
        self.ask("stop")
        self.wait_stopped()

    def wait(self) -> None:
        if self.cli is None:
            return
        self.log(2, "Wait")
        self._dump_counters()
        self.stop()
        status, _ = self.ask("panic.show")
        if status != CLIS_CANT:
            raise TestFailure("Unexpected panic")
        self.cleanup()

    def cleanup(self) -> None:
        assert self.proc is not None and self.cli is not None
        self.cli.close()
        self.cli = None
        try:
            if self.proc.stdin is not None:
                self.proc.stdin.close()
        except OSError:
            pass
        try:
            rc = self.proc.wait(0.2 if not self.real else 10)
        except subprocess.TimeoutExpired:
            # Our cacheserver may not watch stdin in -d mode: ask it to leave with SIGTERM.
            if self.real:
                self.kill()
                raise TestFailure("varnishd did not exit after its CLI closed") from None
            self.log(3, "no exit on stdin EOF: sending SIGTERM")
            self.proc.send_signal(signal.SIGTERM)
            try:
                rc = self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.kill()
                raise TestFailure("cacheserver did not exit after SIGTERM") from None
        if self._out_thread is not None:
            self._out_thread.join(2)
        self.log(2, f"R {self.proc.pid} Status: {rc}")
        if rc != self.expect_exit:
            raise TestFailure(f"Bad exit code: {rc} (expected {self.expect_exit})")

    # ---- VCL ----------------------------------------------------------------------
    def _backends(self) -> str:
        out = []
        for s in self.ctx.servers.values():
            addr = self.ctx.macros.get(f"{s.name}_addr")
            port = self.ctx.macros.get(f"{s.name}_port")
            if addr is None:
                continue
            if addr.startswith("/"):
                out.append(f'backend {s.name} {{ .path = "{addr}"; }}\n')
            else:
                out.append(f'backend {s.name} {{ .host = "{addr}"; .port = "{port}"; }}\n')
        return "".join(out)

    def load_vcl(self, vcl: str, expect: int, with_backends: bool = False) -> str:
        self._ensure()
        self.vcl_nbr += 1
        prefix = f"vcl {self.syntax:.1f};\n" + (self._backends() if with_backends else "")
        if with_backends:
            cmd = f"vcl.inline vcl{self.vcl_nbr} << {NONSENSE}\n{prefix}\n{vcl}\n{NONSENSE}"
        else:
            cmd = f"vcl.inline vcl{self.vcl_nbr} << {NONSENSE}\n{prefix}{vcl}\n{NONSENSE}"
        status, body = self.ask(cmd)
        # Any failure satisfies -errvcl (a vcl_init failure answers 300, a compile error 106).
        if (status == CLIS_OK) != (expect == CLIS_OK):
            raise TestFailure(f"VCL compilation got {status} expected {expect}" +
                              (f"\n{body}" if status != CLIS_OK else ""))
        if status == CLIS_OK:
            st2, b2 = self.ask(f"vcl.use vcl{self.vcl_nbr}")
            if st2 != CLIS_OK:
                raise TestFailure(f"vcl.use vcl{self.vcl_nbr} failed: {st2} {b2}")
        else:
            self.log(2, "VCL compilation failed (as expected)")
        return body

    # ---- counters -----------------------------------------------------------------
    def counters(self) -> dict[str, int]:
        if self.real:
            stat = shutil.which("varnishstat") or "/usr/bin/varnishstat"
            try:
                out = subprocess.run([stat, "-1", "-n", self.workdir], capture_output=True, timeout=10,
                                     text=True).stdout
            except (OSError, subprocess.TimeoutExpired) as e:
                raise TestFailure(f"varnishstat failed: {e}") from e
        else:
            status, out = self.ask(COUNTERS_CLI, quiet=True)
            if status != CLIS_OK:
                raise TestFailure(f"{COUNTERS_CLI} failed: {status} {out}")
        vals: dict[str, int] = {}
        for line in out.splitlines():
            toks = line.split()
            if len(toks) >= 2:
                try:
                    vals[toks[0]] = int(toks[1])
                except ValueError:
                    continue
        return vals

    def _dump_counters(self) -> None:
        """vtest --dump-counters: every counter, as -expect would read it, before the final stop."""
        if not self.ctx.dump_counters:
            return
        try:
            vals = self._settled_counters()
        except TestFailure as e:  # a diagnostic aid: never fails the test
            self.log(1, f"counters not dumped: {e}")
            return
        path = os.path.join(self.ctx.dump_counters, f"{self.ctx.case_name}.{self.name}.json")
        with open(path, "w", encoding="utf-8") as f:
            json.dump(vals, f, indent=0, sort_keys=True)
        self.log(3, f"counters dumped to {path}")

    def _settled_counters(self, quiet_for: float = 1.5, deadline: float = 8.0) -> dict[str, int]:
        """varnishd adds a worker's counters to the shared ones only now and then (-expect retries for
        that): read until the request counters stay the same for quiet_for seconds."""
        vals = self.counters()
        if not self.real:
            return vals
        def key(v: dict[str, int]) -> dict[str, int]:
            return {k: n for k, n in v.items() if k.startswith(("MAIN.", "SMA.", "VBE."))
                    and "uptime" not in k and not k.startswith("MAIN.shm_")}
        end, still = time.monotonic() + deadline, time.monotonic()
        while time.monotonic() < end and time.monotonic() - still < quiet_for:
            time.sleep(0.25)
            new = self.counters()
            if key(new) != key(vals):
                still = time.monotonic()
            vals = new
        return vals

    @staticmethod
    def _lookup(vals: dict[str, int], pattern: str) -> tuple[str, int] | None:
        if "." not in pattern:
            pattern = "MAIN." + pattern
        for k, v in vals.items():
            if fnmatch.fnmatchcase(k, pattern):
                return k, v
        return None

    def expect(self, lhs: str, op: str | None, rhs: str | None) -> None:
        last = ""
        for _ in range(50):
            vals = self.counters()
            if op is None:  # "!PATTERN": no counter may match
                hit = self._lookup(vals, lhs[1:])
                if hit is None:
                    self.log(2, f"not found (as expected): {lhs[1:]}")
                    return
                last = f"Found (not expected): {hit[0]}"
            else:
                left = self._lookup(vals, lhs)
                assert rhs is not None
                try:
                    right: tuple[str, int] | None = (rhs, int(rhs))
                except ValueError:
                    right = self._lookup(vals, rhs)
                if left is None or right is None:
                    last = f"Couldn't find VSC counter named {lhs if left is None else rhs}"
                else:
                    ok = {"==": left[1] == right[1], "!=": left[1] != right[1], "<": left[1] < right[1],
                          ">": left[1] > right[1], "<=": left[1] <= right[1], ">=": left[1] >= right[1]}.get(op)
                    if ok is None:
                        raise TestFailure(f"Bad -expect operator {op}")
                    if ok:
                        self.log(2, f"as expected: {lhs} ({left[1]}) {op} {rhs} ({right[1]})")
                        return
                    last = f"Not true: {lhs} ({left[1]}) {op} {rhs} ({right[1]})"
            time.sleep(0.1)
        raise TestFailure(last)

    def vsc(self, pattern: str) -> None:
        for k, v in self.counters().items():
            if fnmatch.fnmatchcase(k, pattern):
                self.log(4, f"VSC {k} {v}")

    # ---- the varnish command ------------------------------------------------------
    def command(self, av: list[str]) -> None:
        i = 0

        def arg(k: int = 1) -> str:
            if i + k >= len(av):
                raise TestFailure(f"Missing argument to {av[i]}")
            return av[i + k]

        while i < len(av):
            a = av[i]
            if a == "-arg":
                if self.proc is not None:
                    raise TestFailure("-arg after varnishd was launched")
                self.args.append(arg())
                if arg().startswith("-a"):
                    self.has_a_arg = True
                i += 2
            elif a == "-jail":
                self.jail = arg()
                i += 2
            elif a == "-proto":
                self.proto = arg()
                i += 2
            elif a == "-syntax":
                try:
                    self.syntax = float(arg())
                except ValueError as e:
                    raise TestFailure(f"bad -syntax {arg()}") from e
                i += 2
            elif a == "-start":
                self.start()
                i += 1
            elif a == "-stop":
                self.stop()
                i += 1
            elif a == "-wait":
                self.wait()
                i += 1
            elif a == "-wait-running":
                self._ensure()
                self.wait_running()
                i += 1
            elif a == "-wait-stopped":
                self._ensure()
                self.wait_stopped()
                i += 1
            elif a == "-vcl":
                self.load_vcl(arg(), CLIS_OK)
                i += 2
            elif a == "-vcl+backend":
                self.load_vcl(arg(), CLIS_OK, with_backends=True)
                i += 2
            elif a == "-errvcl":
                body = self.load_vcl(arg(2), CLIS_PARAM)
                if arg() not in body:
                    raise TestFailure(f"Did not find expected string: (\"{arg()}\")")
                self.log(2, f"Found expected '{arg()}'")
                i += 3
            elif a == "-cli":
                self.ask(arg())
                i += 2
            elif a == "-cliok":
                self._cli_expect_status(arg(), CLIS_OK)
                i += 2
            elif a == "-clierr":
                try:
                    want = int(arg())
                except ValueError as e:
                    raise TestFailure(f"-clierr needs a status, got {arg()}") from e
                self._cli_expect_status(arg(2), want)
                i += 3
            elif a == "-cliexpect":
                _, body = self.ask(arg(2))
                try:
                    hit = pcre(arg()).search(body)
                except re.error as e:
                    raise TestFailure(f"Bad -cliexpect regexp: {e}") from e
                if not hit:
                    raise TestFailure(f"Expect failed ({arg()}): {body[:200]!r}")
                self.log(2, f"CLI expect match {arg()}")
                i += 3
            elif a == "-clijson":
                status, body = self._cli_expect_status(arg(), CLIS_OK)
                try:
                    json.loads(body)
                except ValueError as e:
                    raise TestFailure(f"CLI output is not JSON: {e}") from e
                i += 2
            elif a == "-expect":
                if arg().startswith("!"):
                    self.expect(arg(), None, None)
                    i += 2
                else:
                    self.expect(arg(), arg(2), arg(3))
                    i += 4
            elif a == "-expectexit":
                self.expect_exit = int(arg())
                i += 2
            elif a == "-vsc":
                self.vsc(arg())
                i += 2
            elif a in ("-vsl_catchup", "-cleanup"):
                i += 1
            else:
                raise TestFailure(f"Unknown varnish argument: {a}")

    def _cli_expect_status(self, cmd: str, want: int) -> tuple[int, str]:
        status, body = self.ask(cmd)
        self.log(2, f"CLI {status:03d} <{cmd}>")
        if status != want:
            raise TestFailure(f"FAIL CLI response {status} expected {want}\n{body}")
        return status, body
