"""A WebSocket echo server (RFC 6455) on a stolen `Upgrade: websocket` connection.

The program does not see the request head, so VCL checks the upgrade request and passes the
client's Sec-WebSocket-Key as the steal argument (examples/websocket.vcl):

    if (tinykvm.steal("websocket_echo", req.http.Sec-WebSocket-Key)) { return (synth(123)); }

A key that is not the base64 of 16 bytes is refused: steal() returns false and VCL answers the
request itself (400). Otherwise the program answers 101 Switching Protocols and echoes every
text and binary message, fragment by fragment as it arrives (memory per connection stays bounded
whatever the message size), answers pings with pongs, and answers a close frame with a close frame
and then closes the connection. A protocol error (an unmasked frame, invalid UTF-8 in a text
message, ...) gets a close frame with its status code (1002, 1007, ...), then the connection
closes. The framing is wsproto's.
"""

import base64
import binascii

from wsproto.connection import Connection, ConnectionState, ConnectionType
from wsproto.events import BytesMessage, CloseConnection, Ping, TextMessage
from wsproto.utilities import generate_accept_token

from kvm_api import (
    SHUT_RDWR,
    buffered,
    pause_reading,
    resume_reading,
    set_socket_on_connect,
    set_socket_on_disconnect,
    set_socket_on_read,
    set_socket_on_writable,
    shutdown,
    wait_for_requests,
    write,
)

HIGH_WATER = 256 * 1024         # unsent output past which a connection is not read
SWITCHING = (
    "HTTP/1.1 101 Switching Protocols\r\n"
    "Upgrade: websocket\r\n"
    "Connection: Upgrade\r\n"
    "Sec-WebSocket-Accept: {accept}\r\n"
    "\r\n"
)

sessions: dict[int, Connection] = {}


def valid_key(key: str) -> bool:
    """RFC 6455 4.2.1: the key is the base64 encoding of 16 bytes."""
    try:
        return len(base64.b64decode(key.strip(), validate=True)) == 16
    except (binascii.Error, ValueError):
        return False


def on_connect(fd: int, remote: str, key: str) -> bool:
    if not valid_key(key):
        return False            # not taken: VCL answers the bad handshake
    accept = generate_accept_token(key.strip().encode()).decode()
    write(fd, SWITCHING.format(accept=accept))
    sessions[fd] = Connection(ConnectionType.SERVER)
    return True


def on_read(fd: int, data: bytes) -> None:
    ws = sessions.get(fd)
    if ws is None or ws.state is ConnectionState.CLOSED:
        return                  # after the closing handshake: nothing more is read
    ws.receive_data(data)
    for event in ws.events():
        if isinstance(event, (TextMessage, BytesMessage)):
            # The echo keeps the fragmentation of what arrived; wsproto numbers continuations.
            write(fd, ws.send(type(event)(data=event.data, message_finished=event.message_finished)))
        elif isinstance(event, Ping):
            write(fd, ws.send(event.response()))
        elif isinstance(event, CloseConnection):
            # The peer's close (answered with the same code), or a protocol error wsproto found
            # (sent with its code). Either way the closing handshake ends here: close the TCP side.
            if ws.state is not ConnectionState.CLOSED:
                write(fd, ws.send(event.response()))
            shutdown(fd, SHUT_RDWR)
            return
    if buffered(fd) > HIGH_WATER:
        pause_reading(fd)


def on_writable(fd: int) -> None:
    resume_reading(fd)


def on_disconnect(fd: int, reason: str) -> None:
    sessions.pop(fd, None)


def main() -> None:
    set_socket_on_connect(on_connect)
    set_socket_on_read(on_read)
    set_socket_on_writable(on_writable)
    set_socket_on_disconnect(on_disconnect)
    wait_for_requests()


if __name__ == "__main__":
    main()
