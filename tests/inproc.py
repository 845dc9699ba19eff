"""Run a cacheserver Server inside the test process, for tests that need its code to run in-process.

The server gets its own asyncio loop in a daemon thread and listens on loopback with real sockets, so a
test talks HTTP/1 (and the admin CLI) to it exactly as to the `cacheserver` process of serverproc.py,
while coverage and mutation tools (mutmut) see the server's code run by the test. InProcServer answers to
the part of ServerProcess's interface the HTTP tests use (`port`, `connect()`, `stop()`); InProcCache is
test_cache_support.Cache's twin (`get`, `cli`, `proc`) for the `make` fixture.
"""

from __future__ import annotations

import asyncio
import collections
import socket
import threading
from pathlib import Path

from polling import wait_for  # noqa: F401  (re-exported: the tests import it from here)
from test_cache_support import CLI, Backend, Cache, caches_of

from cacheserver.admin import start_admin
from cacheserver.server import ListenSpec, Server
from cacheserver.vsl import DEFAULT_MASK, expand_floats, masked_tags

START_TIMEOUT = 15.0     # seconds for the server to start, stop, or answer a call on its loop


class RecordingLog:
    """The shared log's writer, kept in memory: (vxid, tag, text) per record, the last 100,000.

    Writers may pre-join records with NUL ("Begin req 1 rxreq\\0Timestamp Start: ..."): split here.
    """

    closed = False
    params = None           # the server's parameters, once it is set up: vsl_mask as the real writer reads it

    def __init__(self) -> None:
        self.records: collections.deque[tuple[int, str, str]] = collections.deque(maxlen=100_000)
        self.writes: collections.Counter[int] = collections.Counter()     # write() calls per vxid
        self.kinds: dict[int, set[str]] = {}        # the kinds ("c" client, "b" backend) written per vxid

    def wants(self, tag: str) -> bool:
        """As the real writer: vsl_mask's tags are not wanted (its default before the server is set up)."""
        if self.params is None:
            return tag not in DEFAULT_MASK
        return tag not in masked_tags(self.params.vsl_mask)

    def write(self, vxid: int, kind: str, records: list, tail: bytes = b"") -> None:
        self.writes[vxid] += 1
        self.kinds.setdefault(vxid, set()).add(kind)
        if tail:        # records already encoded (a template hit's): "Tag text" joined by NULs
            tag, _, text = tail.decode("utf-8", "surrogateescape").partition(" ")
            records = [*records, (tag, text)]
        for tag, text in records:
            # the times as a reader prints them (the writer leaves them raw: cacheserver/vsl.py)
            text = expand_floats(str(text).encode("utf-8", "surrogateescape")).decode("utf-8", "surrogateescape")
            first, *more = text.split("\0")
            self.records.append((vxid, tag, first))
            for joined in more:
                jtag, _, jtext = joined.partition(" ")
                self.records.append((vxid, jtag, jtext))

    def close(self) -> None:
        pass

    def texts(self, tag: str) -> list[str]:
        return [text for _, t, text in list(self.records) if t == tag]


class InProcServer:
    """A Server with `vcl` loaded, listening on 127.0.0.1 (a free port), on a loop in its own thread.

    `params` are set as `-p NAME=VALUE` would, `storage` as the `-s` arguments; `admin_secret` (a file)
    also starts the admin CLI.
    """

    def __init__(self, vcl: str, params: dict[str, str] | None = None, storage: list[str] | None = None,
                 admin_secret: Path | None = None, filename: str = "<inline>") -> None:
        self.server = Server()
        self.log = self.server.vsl = RecordingLog()
        self.log.params = self.server.params
        for name, value in (params or {}).items():
            self.server.params.set(name, value)
        if storage:
            self.server.configure_storage(storage)
        self.server.listen_specs = [ListenSpec.parse("127.0.0.1:0", 0)]
        self.server.vcl_load("boot", vcl, filename)
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="inproc-server", daemon=True)
        self.thread.start()
        self.admin_address: tuple[str, int] | None = None
        try:
            self.call(self.server.start())
            if admin_secret is not None:
                addresses = self.call(start_admin(self.server, listen="127.0.0.1:0", connect=None,
                                                  secret_file=str(admin_secret)))
                host, port = addresses[0].split()
                self.admin_address = (host, int(port))
        except BaseException:
            self.stop()
            raise
        self.port = self.server.listen_addresses()[0][2]

    def call(self, coro):
        """Run a coroutine on the server's loop and return its result (raises what it raises)."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(START_TIMEOUT)

    def connect(self) -> socket.socket:
        return socket.create_connection(("127.0.0.1", self.port), timeout=5)

    def stop(self) -> None:
        if not self.loop.is_closed():
            if self.thread.is_alive():
                try:
                    self.call(self.server.close())
                    self.call(_cancel_the_rest())
                finally:
                    self.loop.call_soon_threadsafe(self.loop.stop)
                    self.thread.join(START_TIMEOUT)
            if not self.thread.is_alive():
                self.loop.close()


class MemoryTransport(asyncio.Transport):
    """A client connection in memory (no socket): what the server writes, whether it reads, whether it
    closed. For feeding a ClientProtocol exact reads (test_mut_protocol.drive)."""

    def __init__(self) -> None:
        super().__init__()
        self.out = bytearray()
        self.reading = True
        self.closed = False

    def write(self, data) -> None:
        self.out += data

    def get_extra_info(self, name, default=None):
        return {"peername": ("127.0.0.1", 5555), "sockname": ("127.0.0.1", 80)}.get(name, default)

    def is_closing(self) -> bool:
        return self.closed

    def pause_reading(self) -> None:
        self.reading = False

    def resume_reading(self) -> None:
        self.reading = True

    def close(self) -> None:
        self.closed = True

    abort = close


async def _cancel_the_rest() -> None:
    """Cancel what still runs on the loop (requests cut off by the close), so none is left pending."""
    tasks = [task for task in asyncio.all_tasks() if task is not asyncio.current_task()]
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


class InProcCache(Cache):
    """test_cache_support.Cache, with the server in-process: the same get(), cli and proc.connect()."""

    def __init__(self, tmp: Path, vcl: str, backend: Backend | None, *args: str) -> None:
        port = backend.port if backend is not None else 9
        text = vcl.replace("BACKEND", f'backend default {{ .host = "127.0.0.1"; .port = "{port}"; }}')
        secret = tmp / "cli_secret"
        secret.write_bytes(b"test secret\n")
        secret.chmod(0o600)
        params, storage = parse_args(args)
        self.proc = InProcServer(text, params, storage, admin_secret=secret)
        self.cli = CLI(*self.proc.admin_address, secret)


def parse_args(args: tuple[str, ...]) -> tuple[dict[str, str], list[str]]:
    """A command line's `-p NAME=VALUE` pairs (and `-t TTL`, default_ttl) and `-s` specs: the options
    an in-process server takes."""
    params: dict[str, str] = {}
    storage: list[str] = []
    it = iter(args)
    for opt in it:
        value = next(it, None)
        if opt not in ("-p", "-s", "-t") or value is None:
            raise ValueError(f"in-process server: only -p NAME=VALUE, -t TTL and -s SPEC, not {opt!r}")
        if opt == "-s":
            storage.append(value)
            continue
        if opt == "-t":
            params["default_ttl"] = value
            continue
        name, sep, value = value.partition("=")
        if not sep:
            raise ValueError(f"-p {name}: expected NAME=VALUE")
        params[name] = value
    return params, storage


def inproc_cache_factory(tmp_path):
    """The `make` fixture with an in-process server: make(vcl, respond, *args) -> (InProcCache, Backend).

    Test modules declare it with `make = pytest.fixture(inproc_cache_factory)`.
    """
    yield from caches_of(InProcCache, tmp_path)
