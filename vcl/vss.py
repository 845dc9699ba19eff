"""Backend addresses as VCC resolves them at compile time (libvarnish vss.c, vcc_utils.c).

varnishd resolves a backend's `.host` (with `.port` appended after a blank when given) once, when
the VCL is compiled, and refuses the VCL when it does not resolve or resolves to more than one
IPv4 or more than one IPv6 address; the backend then connects to the address it found.
"""

from __future__ import annotations

import socket
from dataclasses import dataclass


class ResolveError(Exception):
    """The address does not resolve; str() is the resolver's reason (a gai_strerror text)."""


class NoAddress(Exception):
    """The name resolves, but to neither an IPv4 nor an IPv6 address."""


class TooManyAddresses(Exception):
    """More than one IPv4 or IPv6 address; `found` lists them as `\\tADDR:PORT` lines."""

    def __init__(self, found: str) -> None:
        super().__init__(found)
        self.found = found


@dataclass(frozen=True, slots=True)
class Resolved:
    ipv4: str | None
    ipv6: str | None
    port: int

    @property
    def address(self) -> str:
        """The address a connection uses: IPv4 first, as varnishd tries it first."""
        return self.ipv4 or self.ipv6 or ""


def split(spec: str) -> tuple[str | None, str | None]:
    """vss_parse: "[v6]:port", "[v6] port", "host:port", "host port", "v6" -> (address, port)."""
    if spec.startswith("["):
        end = spec.find("]")
        if end < 0:
            raise ResolveError("IPv6 address lacks ']'")
        rest = spec[end + 1:]
        if not rest:
            return spec[1:end], None
        if rest[0] not in " :":
            raise ResolveError("IPv6 address has wrong port separator")
        return spec[1:end], rest[1:]
    sep = spec.find(" ")
    if sep < 0:
        sep = spec.find(":")
    if sep < 0:
        return spec, None
    if spec[sep] == ":" and ":" in spec[sep + 1:]:
        return spec, None            # a bare IPv6 address: its colons are not a port separator
    return (spec[:sep] or None), spec[sep + 1:]


def resolve_backend(host: str, port: str | None) -> Resolved:
    """Resolve `.host` (and `.port`) as VCC's Emit_Sockaddr does; raises ResolveError, NoAddress or TooManyAddresses."""
    spec = f"{host} {port}" if port is not None else host
    addr, sport = split(spec)
    try:
        infos = socket.getaddrinfo(addr, sport or "80", type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise ResolveError(exc.strerror or str(exc)) from None
    except (UnicodeError, ValueError) as exc:
        raise ResolveError(str(exc)) from None
    v4: str | None = None
    v6: str | None = None
    found: list[str] = []
    wrong = False
    port_num = 0
    for family, _, _, _, sockaddr in infos:
        ip, port_num = sockaddr[0], sockaddr[1]
        if family == socket.AF_INET:
            wrong |= v4 is not None and v4 != ip
            v4 = v4 or ip
        elif family == socket.AF_INET6:
            wrong |= v6 is not None and v6 != ip
            v6 = v6 or ip
        else:
            continue
        found.append(f"\t{ip}:{port_num}\n")
    if not found:
        raise NoAddress(spec)
    if wrong or len(found) > 2:
        raise TooManyAddresses("".join(found))
    return Resolved(v4, v6, port_num)
