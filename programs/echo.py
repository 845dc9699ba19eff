"""Echoes every byte of a stolen connection back to its sender.

VCL:  if (req.url == "/echo") { if (tinykvm.steal("echo")) { return (synth(123)); } }

Bytes the server had read past the request head (a body, pipelined data) arrive as the first
on_read, so they are echoed too. A sender that does not read its echo is slowed down: past
HIGH_WATER bytes of unsent output this connection is not read until that output has gone out.
When the peer closes (or half-closes) its side, what is still buffered goes out, then the
connection closes.
"""

from kvm_api import (
    buffered,
    pause_reading,
    resume_reading,
    set_socket_on_connect,
    set_socket_on_read,
    set_socket_on_writable,
    wait_for_requests,
    write,
)

HIGH_WATER = 256 * 1024


def on_connect(fd: int, remote: str, arg: str) -> bool:
    return True


def on_read(fd: int, data: bytes) -> None:
    write(fd, data)
    if buffered(fd) > HIGH_WATER:
        pause_reading(fd)


def on_writable(fd: int) -> None:
    resume_reading(fd)          # everything we owed went out: take more


def main() -> None:
    set_socket_on_connect(on_connect)
    set_socket_on_read(on_read)
    set_socket_on_writable(on_writable)
    wait_for_requests()


if __name__ == "__main__":
    main()
