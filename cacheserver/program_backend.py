"""tinykvm.program() as a backend: a program answers the backend request instead of an HTTP server.

`ProgramBackend` is what `tinykvm.program(...)` returns to VCL (a BackendSpec, so bereq.backend,
beresp.backend.name and the per-backend counters work as for any backend). The fetch
(cacheserver.fetch.BusyObj) asks `open_response()` in place of sending bereq over HTTP and gets a
`ProgramConn`: it looks to the fetch like a backend connection whose response head was read
(status, fields, Content-Length or chunked) and whose body comes from read_body(). From there the
response goes through vcl_backend_response, the fetch filters and storage like any other.

A program that cannot answer (not found, queue full, timed out, crashed, out of memory) is a
FetchError: vcl_backend_error, 503 unless VCL says otherwise.
"""

from __future__ import annotations

import itertools
import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from cacheserver.beconn import ConnError
from cacheserver.programs import ProgramError, ProgramResponse
from kvm_api.protocol import MAX_BODY
from vcl.runtime import BackendSpec

if TYPE_CHECKING:
    from cacheserver.fetch import BusyObj

_BAD_FIELD = re.compile(r"[\r\n\0]")


@dataclass(slots=True)
class Step:
    """One program of a chain (tinykvm.chain()) or its end (tinykvm.program())."""

    program: str
    arg: str = ""
    config: str = ""
    error_treshold: int = 400


@dataclass(slots=True)
class ProgramBackend(BackendSpec):
    """A backend made by tinykvm.program() (or tinykvm.live_update())."""

    steps: list[Step] = field(default_factory=list)   # the chain, then the program itself
    live_update: tuple[str, str, int] | None = None    # (program, key, max_size) for live_update()

    async def open_response(self, busy: BusyObj) -> ProgramConn:
        """What BusyObj calls in place of sending bereq to an HTTP backend."""
        return await open_response(busy, self)


# The backends program() made, by (program, arg, config): one object (and one set of per-backend
# counters) per distinct call, not a new one per request; bounded, as arg is often the URL.
_MADE: dict[tuple[str, str, str], ProgramBackend] = {}
_MAX_MADE = 4096


def program_backend(program: str, arg: str, config: str, chain: list[Step]) -> ProgramBackend:
    if chain:
        return ProgramBackend(name=f"tinykvm.{program}", host="tinykvm", port="0",
                              steps=[*chain, Step(program, arg, config)])
    key = (program, arg, config)
    backend = _MADE.get(key)
    if backend is None:
        if len(_MADE) >= _MAX_MADE:
            _MADE.clear()
        backend = _MADE[key] = ProgramBackend(name=f"tinykvm.{program}", host="tinykvm", port="0",
                                              steps=[Step(program, arg, config)])
    return backend


class ProgramConn:
    """A program's response, shaped like a beconn.BackendConn after read_head()."""

    version = "1.1"
    reason = b""
    has_te = False
    reused = False
    body: tuple[bytes, ...] = ()        # no body bytes come with a program's head (see fetch.py)
    held = 0

    def __init__(self, resp: ProgramResponse, head_only: bool) -> None:
        self.resp = resp
        self.status = resp.status
        fields = []
        if resp.content_type:
            fields.append(["Content-Type", resp.content_type, "content-type"])
        for name, value in resp.headers:
            lname = name.lower()
            if lname in ("content-length", "transfer-encoding", "connection"):
                continue                    # the length is ours to say
            fields.append([name, value, lname])
        self.chunked = resp.streaming and not head_only
        self.clen = None if resp.streaming else resp.length
        if self.clen is not None:
            fields.append(["Content-Length", str(self.clen), "content-length"])
        elif self.chunked:
            fields.append(["Transfer-Encoding", "chunked", "transfer-encoding"])
        self.fields = fields
        if head_only:
            resp.close()

    async def read_body(self, between: float) -> bytes:
        try:
            return await self.resp.read()
        except ProgramError as e:
            raise ConnError(str(e)) from None

    def release(self, reuse: bool) -> None:
        self.resp.close()

    def close(self) -> None:
        self.resp.close()


async def request_body(busy: BusyObj, limit: int = MAX_BODY) -> bytes:
    from cacheserver.fetch import FetchError


    body = busy.ctx.bereq_body
    if body is None or not body.present:
        return b""
    parts, size = [], 0
    async for data in body.chunks():
        size += len(data)
        if size > limit:
            raise FetchError(f"request body longer than {limit} bytes")
        parts.append(data)
    return b"".join(parts)


async def run_steps(manager, steps: list[Step], method: str, url: str, headers: list[tuple[str, str]],
                    body: bytes) -> ProgramResponse:
    """Run a chain: each program's output is the next one's request body (a POST); a status at
    or over a step's error_treshold ends the chain with that response."""
    resp = None
    for i, step in enumerate(steps):
        if i > 0:
            method, body = "POST", await resp.body(MAX_BODY)
            headers = [(n, v) for n, v in headers if n.lower() != "content-type"]
            headers.append(("Content-Type", resp.content_type))
        resp = await manager.request(step.program, method, url, step.arg, headers, body, step.config)
        if i < len(steps) - 1 and resp.status >= step.error_treshold:
            return resp
    return resp


async def open_response(busy: BusyObj, backend: ProgramBackend) -> ProgramConn:
    """The fetch's hook: run the program(s) for bereq; FetchError when no response can be had."""
    from cacheserver.fetch import FetchError

    ctx = busy.ctx
    bereq = ctx.bereq
    manager = busy.server.programs
    headers = [(n, v) for n, v in bereq.headers.items()]
    try:
        body = await request_body(busy)
        busy._req_sent()
        if backend.live_update is not None:
            resp = await live_update(manager, backend.live_update, bereq.method, headers, body)
        else:
            resp = await run_steps(manager, backend.steps, bereq.method, bereq.url, headers, body)
    except ProgramError as e:
        raise FetchError(f"tinykvm: {e}") from None
    if not 100 <= resp.status <= 999:
        resp.close()
        raise FetchError(f"tinykvm: program status {resp.status} is not an HTTP status")
    for name, value in resp.headers:
        if _BAD_FIELD.search(name + value):
            resp.close()
            raise FetchError("tinykvm: bad response header from the program")
    return ProgramConn(resp, bereq.method == "HEAD")


_update_dir: Path | None = None


async def live_update(manager, what: tuple[str, str, int], method: str, headers: list[tuple[str, str]],
                      body: bytes) -> ProgramResponse:
    """tinykvm.live_update(): the POSTed body is the new program; its key must match the
    program's `key` setting. 200 when the new program runs, the old one stays otherwise."""
    global _update_dir
    program, key, max_size = what

    def answer(status: int, text: str) -> ProgramResponse:
        return ProgramResponse(status, "text/plain", [], (text + "\n").encode())

    if method not in ("POST", "PUT"):
        return answer(405, "live update needs POST")
    cfg = manager.config(program)
    if not cfg.key or key != cfg.key:
        return answer(403, f"live update of '{program}' refused: wrong or no key")
    if len(body) > max_size:
        return answer(413, f"live update of '{program}' refused: {len(body)} bytes > {max_size}")
    if not body:
        return answer(400, "live update: empty program")
    if _update_dir is None:
        _update_dir = Path(tempfile.mkdtemp(prefix="cacheserver-live-"))
    path = _update_dir / f"{program}.{next(_counter)}.py"
    path.write_bytes(body)
    try:
        await manager.live_update(program, path)
    except ProgramError as e:
        path.unlink(missing_ok=True)
        return answer(400, f"live update of '{program}' failed, the old program stays: {e}")
    return answer(200, f"live update of '{program}': {len(body)} bytes, running")


_counter = itertools.count(1)
