"""The control-channel framing, Print's C formats, and the host's handling of bad messages."""

from __future__ import annotations

import json
import os
import socket
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from kvm_api import protocol
from kvm_api._printf import cformat
from kvm_api.output import LineWriter


def is_open(fd: int) -> bool:
    try:
        os.fstat(fd)
        return True
    except OSError:
        return False


def test_roundtrip_single_and_multi_frame():
    for payload in (b"", b"abc", os.urandom(protocol.CHUNK * 3 + 17)):
        frames = protocol.encode({"op": "steal", "id": 7, "arg": "é"}, payload)
        assert all(len(f) <= protocol.MAX_FRAME for f in frames)
        asm = protocol.Assembler()
        results = [asm.feed(f, [5] if i == 0 else []) for i, f in enumerate(frames)]
        assert results[:-1] == [None] * (len(frames) - 1)
        header, got, fds = results[-1]
        assert (header["op"], header["id"], header["arg"], got, fds) == ("steal", 7, "é", payload, [5])


def test_header_too_large_is_refused():
    with pytest.raises(protocol.ProtocolError, match="too large"):
        protocol.encode({"arg": "x" * protocol.MAX_HEADER})


@pytest.mark.parametrize("frames", [
    [b"\x00\x00"],                                             # short
    [struct.pack(">I", 3) + b"{{{"],                           # not JSON
    [struct.pack(">I", 2) + b"[]"],                            # not an object
    [protocol.encode({"op": "x"}, b"abc")[0] + b"extra"],      # longer than announced
])
def test_bad_frames_close_their_fds(frames):
    r, w = os.pipe()
    asm = protocol.Assembler()
    with pytest.raises(protocol.ProtocolError):
        for f in frames:
            asm.feed(f, [r, w])
    assert not is_open(r) and not is_open(w)
    # The assembler is usable again afterwards.
    assert asm.feed(protocol.encode({"op": "ok"})[0]) == ({"op": "ok", "n": 0}, b"", [])


def test_fd_on_a_continuation_frame_closes_all_fds():
    a, b = os.pipe()
    frames = protocol.encode({"op": "x"}, b"y" * (protocol.CHUNK + 1))
    asm = protocol.Assembler()
    assert asm.feed(frames[0], [a]) is None
    with pytest.raises(protocol.ProtocolError, match="continuation"):
        asm.feed(frames[1], [b])
    assert not is_open(a) and not is_open(b)


def test_cformat_speaks_c():
    assert cformat("* FD %d data: %p, %zu bytes\n", (5, 0x1234, 30)) == "* FD 5 data: 0x1234, 30 bytes\n"
    assert cformat("%lld|%5.1f|%-3s|%u|%c|100%%|%*d", (1, 2.25, "a", 3, 65, 4, 9)) == "1|  2.2|a  |3|A|100%|   9"
    assert cformat("%s", (b"bytes",)) == "bytes"
    assert cformat("%p", (object(),)).startswith("0x")
    with pytest.raises(TypeError):
        cformat("%d %d", (1,))
    with pytest.raises(TypeError):
        cformat("%d", (1, 2))
    # a format is compiled once: the same format with other arguments, and conversions after a '*'
    assert cformat("* FD %d data: %p, %zu bytes\n", (6, 0x10, 2)) == "* FD 6 data: 0x10, 2 bytes\n"
    assert cformat("%*s|%p|%s", (4, b"ab", 16, "x")) == "  ab|0x10|x"
    with pytest.raises(TypeError):
        cformat("%*d", (4,))


def test_line_writer_prefixes_whole_lines():
    r, w = os.pipe()
    try:
        out = LineWriter(w, "p: ", autoflush=False)
        for piece in ("a\r\nb", "c\n", "d\ne\n", "", "tail"):
            out.write(piece)
        out.flush()                 # complete lines only; "tail" waits for its newline
        assert os.read(r, 1000) == b"p: a\np: bc\np: d\np: e\n"
        out.close_out()
        assert os.read(r, 1000) == b"p: tail\n"
    finally:
        os.close(r)
        os.close(w)


def test_line_writer_bounds_its_buffer_and_autoflushes(tmp_path):
    from kvm_api.output import MAX_BUFFER

    path = tmp_path / "log"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT)
    try:
        out = LineWriter(fd, "p: ", autoflush=False)
        out.write("x" * (MAX_BUFFER // 2))
        out.write("\r\n")                           # the CR goes as C's Print would leave it: cut
        assert path.read_bytes() == b""             # buffered until a flush or past MAX_BUFFER
        out.write("y" * (MAX_BUFFER + 1))           # a line without newline past the bound: cut
        assert path.read_bytes() == b"p: " + b"x" * (MAX_BUFFER // 2) + b"\np: " + b"y" * (MAX_BUFFER + 1) + b"\n"
        assert not out.pending()
        out.autoflush = True                        # outside the loop: whole lines at once
        out.write("one\ntw")
        assert path.read_bytes().endswith(b"\np: one\n")
        out.write("o\n")
        assert path.read_bytes().endswith(b"\np: one\np: two\n")
    finally:
        os.close(fd)


def test_host_closes_fds_it_did_not_ask_for(tmp_path):
    """A steal message with two fds, or fds on a "get", is refused and every fd is closed."""
    prog = tmp_path / "p.py"
    prog.write_text("from kvm_api import set_socket_on_connect, wait_for_requests\n"
                    "set_socket_on_connect(lambda fd, remote, arg: True)\n"
                    "wait_for_requests()\n")
    parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    proc = subprocess.Popen(
        [sys.executable, "-m", "kvm_api.host", "--name", "p", "--control-fd", str(child.fileno()),
         str(prog)], pass_fds=[child.fileno()],
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)})
    child.close()
    try:
        parent.settimeout(10)
        assert json.loads(parent.recv(65536)[4:])["op"] == "ready"
        base = len(os.listdir(f"/proc/{proc.pid}/fd"))
        for _ in range(50):
            a, b = socket.socketpair()
            socket.send_fds(parent, protocol.encode({"op": "steal", "id": 1, "remote": "", "arg": ""}),
                            [a.fileno(), b.fileno()])
            reply = json.loads(parent.recv(65536)[4:])
            assert (reply["op"], reply["accepted"]) == ("reply", False)
            socket.send_fds(parent, protocol.encode({"op": "get", "id": 2, "url": "/", "arg": ""}),
                            [a.fileno()])
            reply = json.loads(parent.recv(65536)[4:])
            assert reply == {"op": "response", "id": 2, "error": "program has no backend_get", "n": 0}
            parent.send(b"\x00garbage")                 # ignored, the loop goes on
            a.close()
            b.close()
        assert len(os.listdir(f"/proc/{proc.pid}/fd")) == base
        parent.close()
        assert proc.wait(timeout=5) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
