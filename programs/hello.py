"""The tinykvm docs' hello program: a backend (on_get) and the TCP example (a stolen connection).

As a backend, on_get answers every GET with Hello World:
      sub vcl_backend_fetch { set bereq.backend = tinykvm.program("hello", bereq.url); }
On a stolen connection it answers every request with the same, written by hand:
      if (req.url == "/tcp") { if (tinykvm.steal("hello", req.url)) { return (synth(123)); } }
"""

from kvm_api import (
    Print,
    set_backend_get,
    set_socket_on_connect,
    set_socket_on_disconnect,
    set_socket_on_read,
    wait_for_requests,
    write,
)

RESPONSE = (
    b"HTTP/1.1 200 OK\r\n"
    b"Server: Varnish Cache Edgerprise\r\n"
    b"Content-Type: text/plain\r\n"
    b"Content-Length: 13\r\n"
    b"\r\n"
    b"Hello World!\n"
)


def on_get(url: str, arg: str) -> tuple[int, str, bytes]:
    return 200, "text/plain", b"Hello World!\n"


def on_connected(fd: int, remote: str, argument: str) -> bool:
    Print("* FD %d connected. Remote: %s Arg: %s\n", fd, remote, argument)
    write(fd, RESPONSE)
    return True


def on_read(fd: int, data: bytes) -> None:
    Print("* FD %d data: %p, %zu bytes\n", fd, data, len(data))
    # Assume request
    write(fd, RESPONSE)


def on_disconnect(fd: int, reason: str) -> None:
    Print("* FD %d disconnected: %s\n", fd, reason)


def main() -> None:
    Print("Hello Compute World!\n")

    set_backend_get(on_get)
    set_socket_on_connect(on_connected)
    set_socket_on_read(on_read)
    set_socket_on_disconnect(on_disconnect)
    wait_for_requests()


if __name__ == "__main__":
    main()
