"""Process-wide state of a program: its callbacks, its host context and its event loop."""

from __future__ import annotations

import socket
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

if TYPE_CHECKING:
    from kvm_api.loop import EventLoop
    from kvm_api.output import LineWriter


@dataclass
class Callbacks:
    on_connect: Callable[[int, str, str], object] | None = None
    on_read: Callable[[int, bytes], object] | None = None
    on_writable: Callable[[int], object] | None = None
    on_disconnect: Callable[[int, str], object] | None = None
    on_get: Callable[[str, str], object] | None = None
    on_post: Callable[[str, str, str, bytes], object] | None = None


@dataclass
class Host:
    """Set by kvm_api.host before the program file runs."""

    name: str
    ctrl: socket.socket
    waited: bool = False          # wait_for_requests() was called
    settings: dict | None = None  # the limits the server asked for (kvm_api.limits)


callbacks = Callbacks()
host: Host | None = None
loop: EventLoop | None = None
request: object = None               # the kvm_api.Request being answered now
output: LineWriter | None = None      # sys.stdout and sys.stderr of a program process
