"""The one event loop of a program process: the control channel and every stolen socket.

An epoll loop, single-threaded, like the epoll loop of the original. Every socket the
server hands over becomes a Conn; every Conn leaves through `_close()` (or `_discard()` when
on_connect refused it), the only places that close its fd, so each fd is closed exactly once.

Callbacks never see a close happen under them: write() and shutdown() only mark a connection,
and the loop closes marked connections after the callback returned (`_flush_closes`).
"""

from __future__ import annotations

import os
import select
import socket
import sys
import time
import traceback
from collections import deque

from kvm_api import _state, protocol
from kvm_api._state import Callbacks

RECV_SIZE = 64 * 1024
# How long buffered output may take to drain before a closing socket goes anyway (a peer that
# never reads must not hold an fd forever).
LINGER_SECONDS = float(os.environ.get("KVM_API_LINGER", "10"))
_IO = socket.MSG_DONTWAIT | socket.MSG_NOSIGNAL   # never block, never change the shared O_NONBLOCK flag
# Print lines are written when the loop has nothing to do, before any message to the server, and
# after this long while it stays busy: one write for many turns under load.
LOG_DELAY = 0.05

# What epoll watches; any other event (EPOLLHUP, EPOLLERR) wakes both sides, as selectors does.
_IN, _OUT = select.EPOLLIN, select.EPOLLOUT

DISCONNECTED = "Disconnected"
RESET = "Reset"
ERROR = "Error"


class Conn:
    __slots__ = ("fd", "sock", "out", "reading", "wr_shut", "shut_wr_pending", "short_write",
                 "accepted", "closing", "reason", "deadline", "events", "closed", "paused")

    def __init__(self, fd: int, sock: socket.socket) -> None:
        self.fd = fd
        self.sock = sock
        self.out = bytearray()          # what the socket did not take yet
        self.reading = True
        self.wr_shut = False            # the program called shutdown(SHUT_WR/RDWR): no more write()
        self.shut_wr_pending = False    # send FIN once `out` has drained
        self.short_write = False        # call on_writable once `out` has drained
        self.accepted = False
        self.closing = False            # close requested (maybe after draining)
        self.reason = ""
        self.deadline: float | None = None
        self.events = 0                 # what the selector watches now
        self.closed = False
        self.paused = False             # pause_reading(): not watched for input until resumed


class EventLoop:
    def __init__(self, ctrl: socket.socket, callbacks: Callbacks) -> None:
        self.cb = callbacks
        self.ctrl = ctrl
        self.ctrl.setblocking(False)
        # select.epoll itself, not selectors: its per-event keys cost more than this loop's own work
        self.epoll = select.epoll()
        self._ctrl_fd = ctrl.fileno()
        self._ctrl_events = _IN
        self.epoll.register(self._ctrl_fd, _IN)
        self._watched: dict[int, Conn] = {}   # fd -> the Conn epoll watches it for
        self.conns: dict[int, Conn] = {}
        self._to_close: list[Conn] = []
        self._draining: set[Conn] = set()    # closing once their output is out; have a deadline
        self._ctrl_out: deque[bytes] = deque()
        self._assembler = protocol.Assembler()
        self.running = False

    # -- the loop ---------------------------------------------------------------------------------

    def run(self) -> None:
        """Serve until the server closes the control channel."""
        self.running = True
        output = _state.output
        if output is not None:
            output.autoflush = False
        self.send_ctrl({"op": "ready", "pid": os.getpid()})
        try:
            watched = self._watched
            logged = time.monotonic()
            while self.running:
                events = None
                if output is not None and output.pending():
                    if time.monotonic() - logged < LOG_DELAY:
                        events = self.epoll.poll(0)
                    if not events:
                        output.flush()
                        logged = time.monotonic()
                if not events:
                    timeout = self._timeout()
                    events = self.epoll.poll(-1 if timeout is None else timeout)
                # each event goes to the Conn watched when it came (a socket stolen later in this
                # turn may reuse the fd of one closed in it)
                ready = [(watched.get(fd), fd, mask) for fd, mask in events]
                for conn, fd, mask in ready:
                    if conn is None:
                        if fd == self._ctrl_fd:
                            self._on_ctrl(mask)
                        continue
                    if not conn.closed and mask & ~_OUT:
                        self._on_readable(conn)
                    if not conn.closed and mask & ~_IN:
                        self._on_writable(conn)
                    self._flush_closes()
                self._expire()
        finally:
            for conn in list(self.conns.values()):
                self._close(conn, DISCONNECTED)
            self.epoll.close()

    def _timeout(self) -> float | None:
        if not self._draining:
            return None
        return max(0.0, min(c.deadline for c in self._draining) - time.monotonic())

    def _expire(self) -> None:
        now = time.monotonic()
        for conn in [c for c in self._draining if c.deadline <= now]:
            self._close(conn, conn.reason)

    # -- API used by kvm_api.write / shutdown -------------------------------------------------------

    def write(self, fd: int, data: bytes) -> int:
        conn = self.conns.get(fd)
        if conn is None or conn.closing or conn.wr_shut:
            return -1
        if not data:
            return 0
        sent = 0
        if not conn.out:
            try:
                sent = conn.sock.send(data, _IO)
            except (BlockingIOError, InterruptedError):
                sent = 0
            except OSError as e:
                self._fail(conn, e)
                return -1
        if sent < len(data):
            conn.out += data[sent:]
            conn.short_write = True
            self._update(conn)
        return len(data)

    def shutdown(self, fd: int, how: int) -> int:
        conn = self.conns.get(fd)
        if conn is None or conn.closing:
            return -1
        if how not in (socket.SHUT_RD, socket.SHUT_WR, socket.SHUT_RDWR):
            return -1
        if how == socket.SHUT_RDWR:
            # Closed once what was written has gone out (or LINGER_SECONDS passed).
            self._request_close(conn, DISCONNECTED, drain=True)
            return 0
        if how == socket.SHUT_RD:
            conn.reading = False
            try:
                conn.sock.shutdown(socket.SHUT_RD)
            except OSError:
                pass
        else:
            conn.wr_shut = True
            if conn.out:
                conn.shut_wr_pending = True
            else:
                self._shut_wr(conn)
        if not conn.reading and conn.wr_shut:
            self._request_close(conn, DISCONNECTED, drain=True)
        else:
            self._update(conn)
        return 0

    def buffered(self, fd: int) -> int:
        conn = self.conns.get(fd)
        return -1 if conn is None else len(conn.out)

    def set_paused(self, fd: int, paused: bool) -> int:
        conn = self.conns.get(fd)
        if conn is None or conn.closing:
            return -1
        conn.paused = paused
        self._update(conn)
        return 0

    # -- sockets ----------------------------------------------------------------------------------

    def _on_readable(self, conn: Conn) -> None:
        try:
            data = conn.sock.recv(RECV_SIZE, _IO)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as e:
            self._fail(conn, e)
            return
        if not data:
            # The peer sent FIN: what we still have to say goes out first (a half-closed client
            # still reads), then the connection closes.
            conn.reading = False
            self._request_close(conn, DISCONNECTED, drain=True)
            return
        if self.cb.on_read is not None:
            self._call(conn, self.cb.on_read, conn.fd, data)

    def _on_writable(self, conn: Conn) -> None:
        while conn.out:
            try:
                n = conn.sock.send(conn.out, _IO)
            except (BlockingIOError, InterruptedError):
                break
            except OSError as e:
                self._fail(conn, e)
                return
            del conn.out[:n]
        if conn.out:
            return
        if conn.shut_wr_pending:
            conn.shut_wr_pending = False
            self._shut_wr(conn)
        if conn.closing:
            self._to_close.append(conn)
            return
        self._update(conn)
        if conn.short_write:
            conn.short_write = False
            if self.cb.on_writable is not None:
                self._call(conn, self.cb.on_writable, conn.fd)

    def _shut_wr(self, conn: Conn) -> None:
        try:
            conn.sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass

    def _call(self, conn: Conn, fn, *args) -> object:
        """Run a program callback; an exception ends that connection only."""
        try:
            return fn(*args)
        except Exception:
            traceback.print_exc(file=sys.stderr)
            sys.stderr.flush()
            self._request_close(conn, ERROR, drain=False)
            return None

    def _fail(self, conn: Conn, err: OSError) -> None:
        reset = isinstance(err, (ConnectionResetError, BrokenPipeError, ConnectionAbortedError))
        conn.out.clear()
        self._request_close(conn, RESET if reset else ERROR, drain=False)

    def _request_close(self, conn: Conn, reason: str, *, drain: bool) -> None:
        if conn.closed:
            return
        if not conn.closing:
            conn.closing = True
            conn.reason = reason        # the first cause wins (an EOF then EPIPE stays "Disconnected")
        conn.reading = False
        if drain and conn.out:
            if conn.deadline is None:
                conn.deadline = time.monotonic() + LINGER_SECONDS
                self._draining.add(conn)
            self._update(conn)
        else:
            conn.out.clear()
            self._to_close.append(conn)

    def _flush_closes(self) -> None:
        while self._to_close:
            conn = self._to_close.pop()
            self._close(conn, conn.reason)

    def _update(self, conn: Conn) -> None:
        """Make the selector watch what `conn` needs now."""
        if conn.closed:
            return
        events = (_IN if conn.reading and conn.accepted and not conn.paused else 0) | (
            _OUT if conn.out else 0)
        if events == conn.events:
            return
        if conn.events == 0:
            self.epoll.register(conn.fd, events)
            self._watched[conn.fd] = conn
        elif events == 0:
            self._unwatch(conn)
        else:
            self.epoll.modify(conn.fd, events)
        conn.events = events

    def _unwatch(self, conn: Conn) -> None:
        self.epoll.unregister(conn.fd)
        if self._watched.get(conn.fd) is conn:
            del self._watched[conn.fd]

    def _forget(self, conn: Conn) -> None:
        conn.closed = True
        self._draining.discard(conn)
        if self.conns.get(conn.fd) is conn:
            del self.conns[conn.fd]
        if conn.events:
            self._unwatch(conn)
            conn.events = 0

    def _close(self, conn: Conn, reason: str) -> None:
        """The one exit of an accepted connection: on_disconnect once, then close the fd."""
        if conn.closed:
            return
        self._forget(conn)
        if conn.accepted:                   # the server counts the connections programs hold
            self.send_ctrl({"op": "closed", "reason": reason})
        try:
            if conn.accepted and self.cb.on_disconnect is not None:
                self.cb.on_disconnect(conn.fd, reason)
        except Exception:
            traceback.print_exc(file=sys.stderr)
            sys.stderr.flush()
        finally:
            conn.sock.close()

    def _discard(self, conn: Conn) -> None:
        """A refused connection: close our copy only; the server keeps the connection."""
        self._forget(conn)
        conn.sock.close()

    # -- control channel --------------------------------------------------------------------------

    def _on_ctrl(self, mask: int) -> None:
        if mask & ~_IN:
            self._flush_ctrl()
        if not mask & ~_OUT:
            return
        while self.running:
            try:
                frame, fds, flags, _ = socket.recv_fds(
                    self.ctrl, protocol.MAX_FRAME, protocol.MAX_FDS, socket.MSG_CMSG_CLOEXEC)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                self.running = False
                return
            if not frame and not fds:
                self.running = False        # the server is gone: so are we
                return
            try:
                if flags & (socket.MSG_TRUNC | socket.MSG_CTRUNC):
                    raise protocol.ProtocolError("truncated frame")
                msg = self._assembler.feed(frame, fds)
            except protocol.ProtocolError as e:
                # feed() closed the fds it was given; a truncated frame's fds are closed here
                if flags & (socket.MSG_TRUNC | socket.MSG_CTRUNC):
                    for fd in fds:
                        os.close(fd)
                print(f"kvm_api: control channel: {e}", file=sys.stderr, flush=True)
                continue
            if msg is not None:
                self._dispatch(*msg)

    def _dispatch(self, header: dict, payload: bytes, fds: list[int]) -> None:
        op = header.get("op")
        if op == "steal" and len(fds) == 1:
            self._steal(header, payload, fds[0])
            return
        for fd in fds:                  # fds we did not ask for are never kept
            os.close(fd)
        if op == "steal":
            self.send_ctrl({"op": "reply", "id": header.get("id"), "accepted": False})
        elif op in ("request", "get"):       # "get": the first protocol's name, still answered
            self._request(header, payload)

    def _steal(self, header: dict, prebuffer: bytes, fd: int) -> None:
        try:
            sock = socket.socket(fileno=fd)
        except OSError:
            os.close(fd)
            self.send_ctrl({"op": "reply", "id": header.get("id"), "accepted": False})
            return
        conn = Conn(fd, sock)
        self.conns[fd] = conn           # write() works inside on_connect
        accepted = False
        if self.cb.on_connect is not None:
            try:
                accepted = bool(self.cb.on_connect(fd, str(header.get("remote", "")),
                                                   str(header.get("arg", ""))))
            except Exception:
                traceback.print_exc(file=sys.stderr)
                sys.stderr.flush()
        if not accepted:
            self._to_close = [c for c in self._to_close if c is not conn]
            self._discard(conn)
            self.send_ctrl({"op": "reply", "id": header.get("id"), "accepted": False})
            return
        conn.accepted = True
        self.send_ctrl({"op": "reply", "id": header.get("id"), "accepted": True})
        self._update(conn)
        # Bytes the server read past the request come first, before anything from the socket.
        if prebuffer and not conn.closing and self.cb.on_read is not None:
            self._call(conn, self.cb.on_read, fd, prebuffer)
        self._flush_closes()

    def _request(self, header: dict, body: bytes) -> None:
        """A backend request: on_get (GET, HEAD) or on_post (any other method) answers it."""
        from kvm_api import BackendResponse, Request

        rid = header.get("id")
        method = str(header.get("method", "GET"))
        url, arg = str(header.get("url", "")), str(header.get("arg", ""))
        req = Request(method, url, arg, [(str(n), str(v)) for n, v in header.get("headers", [])], body,
                      str(header.get("config", "")))
        get = method in ("GET", "HEAD")
        fn = self.cb.on_get if get else self.cb.on_post
        if fn is None:
            self.send_ctrl({"op": "response", "id": rid,
                            "error": "program has no " + ("backend_get" if get else "backend_post")})
            return
        _state.request = req
        try:
            try:
                answer = fn(url, arg) if get else fn(url, arg, req.header("Content-Type") or "", body)
            except BackendResponse as r:
                answer = r.response
            status, ctype, out, *rest = answer
            headers = _header_pairs(rest[0] if rest else ())
            meta = {"op": "response", "id": rid, "status": int(status), "content_type": str(ctype),
                    "headers": headers}
            if isinstance(out, (bytes, bytearray, memoryview, str)):
                self.send_ctrl(meta, out.encode() if isinstance(out, str) else bytes(out))
            else:
                self._stream(meta, out)
        except MemoryError:
            self._fail_request(rid, "MemoryError: out of request memory", recycle=True)
        except Exception as e:
            traceback.print_exc(file=sys.stderr)
            self._fail_request(rid, f"{type(e).__name__}: {e}")
        finally:
            _state.request = None

    def _fail_request(self, rid: object, error: str, recycle: bool = False) -> None:
        sys.stderr.flush()
        self.send_ctrl({"op": "response", "id": rid, "error": error, "recycle": recycle})

    def _stream(self, meta: dict, pieces) -> None:
        """Send a response body piece by piece as the program produces it; blocking sends, so a
        slow consumer slows the program down instead of piling the body up in memory."""
        rid = meta["id"]
        self._send_now(protocol.encode({**meta, "stream": True}))
        try:
            for piece in pieces:
                if isinstance(piece, str):
                    piece = piece.encode()
                if piece:
                    self._send_now(protocol.encode({"op": "chunk", "id": rid}, bytes(piece)))
        except MemoryError:
            self._send_now(protocol.encode({"op": "end", "id": rid, "error": "MemoryError", "recycle": True}))
            return
        except Exception as e:
            traceback.print_exc(file=sys.stderr)
            sys.stderr.flush()
            self._send_now(protocol.encode({"op": "end", "id": rid, "error": f"{type(e).__name__}: {e}"}))
            return
        self._send_now(protocol.encode({"op": "end", "id": rid}))

    def _send_now(self, frames: list[bytes]) -> None:
        _log_first()
        self._ctrl_out.extend(frames)
        while self._ctrl_out and self.running:
            self._flush_ctrl()
            if self._ctrl_out:
                select.select([], [self.ctrl], [], 1.0)

    def send_ctrl(self, header: dict, payload: bytes = b"") -> None:
        _log_first()
        self._ctrl_out.extend(protocol.encode(header, payload))
        self._flush_ctrl()

    def _flush_ctrl(self) -> None:
        while self._ctrl_out:
            try:
                self.ctrl.send(self._ctrl_out[0])
            except (BlockingIOError, InterruptedError):
                break
            except OSError:
                self.running = False
                self._ctrl_out.clear()
                return
            self._ctrl_out.popleft()
        want = _IN | (_OUT if self._ctrl_out else 0)
        if self._ctrl_events != want:
            self.epoll.modify(self._ctrl_fd, want)
            self._ctrl_events = want



def _log_first() -> None:
    """Write the Print lines so far before the server hears more from us: what it does next (answer
    a client, stop this process) comes after them."""
    if _state.output is not None:
        _state.output.flush()


def _header_pairs(headers: object) -> list[list[str]]:
    """Response headers as given (a dict or (name, value) pairs), as [name, value] lists."""
    items = headers.items() if isinstance(headers, dict) else headers
    out = []
    for name, value in items:
        name, value = str(name), str(value)
        if not name or any(c in name + value for c in "\r\n\0") or ":" in name:
            raise ValueError(f"bad response header {name!r}")
        out.append([name, value])
    return out
