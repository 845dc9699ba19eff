"""Backend health probes: one task per probed backend, reporting through backends.set_probe_health.

Each poll opens a connection, sends `.request` (or a GET of `.url`), and counts as good when the
response, read to the backend's close within `.timeout`, starts with a status line with
`.expected_response`. The backend is healthy while at least
`.threshold` of the last `.window` polls were good; `.initial` good polls are assumed at start.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import socket
import time
from collections import deque

from cacheserver.backends import count_fail, live, set_probe_health
from vcl.runtime import BackendSpec

log = logging.getLogger("cacheserver.probes")


def _request(spec: BackendSpec, probe) -> bytes:
    if probe.request:
        return ("\r\n".join(probe.request) + "\r\n\r\n").encode("latin-1", "replace")
    host = spec.host_header or spec.host
    return f"GET {probe.url} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode("latin-1", "replace")


async def poll(spec: BackendSpec, probe) -> bool:
    """One probe: True when the backend answered with the expected status in time."""
    return "H" in await poll_steps(spec, probe)


async def poll_steps(spec: BackendSpec, probe, info: list | None = None) -> str:
    """One probe, as the steps that went right or wrong (varnishd's bits): "4"/"6" connected,
    "X"/"x" request sent or not, "R"/"r" response line read or not, "H" the expected status.
    `info` gets what varnishd's Backend_health record says last: the response line, or the error."""
    writer = None
    steps = ""
    info = info if info is not None else []
    try:
        async with asyncio.timeout(probe.timeout):
            reader, writer = await asyncio.open_connection(spec.host, int(spec.port))
            sock = writer.get_extra_info("socket")
            steps += "6" if sock is not None and sock.family == socket.AF_INET6 else "4"
            try:
                writer.write(_request(spec, probe))
                await writer.drain()
            except OSError:
                return steps + "x"
            steps += "X"
            # varnishd 7.1 reads the response to EOF within .timeout and only then judges its status
            # line: a backend that answers but keeps the connection open fails the poll.
            head = bytearray()
            while chunk := await reader.read(4096):
                if len(head) < _RESP_BUF:
                    head += chunk[:_RESP_BUF - len(head)]
            if not head:
                info.append("Empty response")
                return steps
            steps += "R"
            line = bytes(head).split(b"\r", 1)[0].split(b"\n", 1)[0]
            info.append(line.decode("latin-1"))
            if _status(line) == probe.expected_response:
                steps += "H"
            return steps
    except (OSError, TimeoutError, ValueError) as exc:
        reading = steps.endswith("X") and not isinstance(exc, TimeoutError)
        info.append(_error_text("Open" if not steps else "Read" if reading else "Poll", exc))
        if steps.endswith("X"):
            steps += "r"                   # sent, but no answer in time
        elif not steps and not isinstance(exc, ValueError):
            count_fail(spec, exc, probe=True)   # varnishd counts a probe's failed connect by errno
        return steps
    finally:
        if writer is not None:
            writer.close()


_RESP_BUF = 128     # varnishd keeps this much of a probe's response; the rest is read and dropped
_STATUS_LINE = re.compile(rb"HTTP/[0-9.]+ +([0-9]+)")


def _status(line: bytes) -> int | None:
    """The status of a response line, read as varnishd's `sscanf("HTTP/%*f %u ")` does."""
    m = _STATUS_LINE.match(line)
    return int(m.group(1)) if m else None


def _error_text(what: str, exc: BaseException) -> str:
    """varnishd's "Open error 111 (Connection refused)" / "Poll error 110 (Connection timed out)"."""
    if isinstance(exc, TimeoutError) or not isinstance(getattr(exc, "errno", None), int):
        return f"{what} error 110 ({os.strerror(110)})"
    return f"{what} error {exc.errno} ({os.strerror(exc.errno)})"


_BITS = "46UxXrRH"     # the Backend_health bit string: these steps, in this order, '-' when not taken


def health_record(name: str, was_sick: bool, healthy: bool, steps: str, good: int, probe,
                  rtt: float, avg: float, info: str) -> tuple[str, str]:
    """The Backend_health record varnishd's prober writes after each poll (vxid 0)."""
    change = ("Back" if was_sick else "Still") if healthy else ("Still" if was_sick else "Went")
    bits = "".join(b if b in steps else "-" for b in _BITS)
    return ("Backend_health", '%s %s %s %s %d %d %d %.6f %.6f "%s"' % (
        name, change, "healthy" if healthy else "sick", bits, good, probe.threshold, probe.window,
        rtt, avg, info))


class Prober:
    def __init__(self, spec: BackendSpec, probe, vsl=None) -> None:
        self.vsl = vsl             # the shared log: Backend_health records
        self.spec = spec
        self.probe = probe
        initial = probe.initial if probe.initial is not None else max(probe.threshold - 1, 0)
        self.window: deque[bool] = deque([True] * min(initial, probe.window), maxlen=max(probe.window, 1))
        self.task: asyncio.Task | None = None
        live(spec).probe_bits["H"] = (1 << min(initial, probe.window)) - 1   # the assumed good polls
        self.sick = False          # a backend starts healthy until its first report says otherwise
        self._report("H" if initial else "")

    def _report(self, steps: str = "H", rtt: float = 0.0, info: str = "") -> None:
        good = sum(self.window)
        state = live(self.spec)
        state.probe_good = good
        was_sick = self.sick
        self.sick = good < self.probe.threshold
        set_probe_health(self.spec, not self.sick)
        record = health_record(self.spec.name, was_sick, not self.sick, steps, good, self.probe, rtt,
                               state.probe_avg if rtt else 0.0, info)
        if self.vsl is not None:
            self.vsl.write(0, "-", [record])
        else:
            self.unlogged = record     # made before the log was open: written when polling starts

    async def run(self) -> None:
        state = live(self.spec)
        while True:
            started = time.monotonic()
            info: list[str] = []
            steps = await poll_steps(self.spec, self.probe, info)
            rtt = time.monotonic() - started if "H" in steps else 0.0
            good = "H" in steps
            for bit, history in state.probe_bits.items():
                state.probe_bits[bit] = ((history << 1) | (bit in steps)) & ((1 << 64) - 1)
            if good:   # varnishd averages over the last few good polls
                state.probe_avg += (time.monotonic() - started - state.probe_avg) / 4
            self.window.append(good)
            state.probe_log = (state.probe_log + [good])[-64:]
            self._report(steps, rtt, info[-1] if info else "")
            await asyncio.sleep(self.probe.interval)

    unlogged = None

    def start(self, vsl=None) -> None:
        if self.vsl is None and vsl is not None:
            self.vsl = vsl
            if self.unlogged is not None:
                vsl.write(0, "-", [self.unlogged])
                self.unlogged = None
        self.task = asyncio.get_running_loop().create_task(self.run())

    def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
            self.task = None


class Probes:
    """The probers of every loaded VCL, by VCL name."""

    def __init__(self) -> None:
        self.by_vcl: dict[str, list[Prober]] = {}
        self.vsl = None        # the shared log, for the probers' Backend_health records

    def prepare(self, name: str, vcl) -> None:
        """Set up probers for `vcl`'s probed backends (`probe default` is given to those without a
        probe at compile time) without polling: each backend starts at its probe's .initial health,
        which vcl_init already sees."""
        if name in self.by_vcl:
            return
        probers = []
        for spec in (getattr(vcl, "backends", None) or {}).values():
            if spec.host is None or spec.probe is None:
                continue
            probers.append(Prober(spec, spec.probe, self.vsl))
        self.by_vcl[name] = probers

    def start(self, name: str, vcl) -> None:
        """Poll the backends of `vcl`."""
        self.prepare(name, vcl)
        for prober in self.by_vcl[name]:
            if prober.task is None:
                prober.start(self.vsl)

    def stop(self, name: str) -> None:
        for prober in self.by_vcl.pop(name, []):
            prober.stop()

    def stop_all(self) -> None:
        for name in list(self.by_vcl):
            self.stop(name)
