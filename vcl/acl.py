"""VCL ACLs: entries resolved at load into integer (mask, network) pairs; matching is a short loop."""

from __future__ import annotations

import ipaddress
import re
import socket
from functools import lru_cache

from vcl.runtime import IP


@lru_cache(maxsize=4096)
def _addr_key(addr: str) -> tuple[int, int] | None:
    """(IP version, address as an int) for an address string; IPv4-mapped IPv6 counts as IPv4."""
    try:
        ip = ipaddress.ip_address(addr)
    except ValueError:
        return None
    if ip.version == 6 and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.version, int(ip)


class Acl:
    """An ACL prepared at load: networks as (version, mask, network) integers, most specific first;
    the first entry that contains the address decides, as in Varnish."""

    __slots__ = ("name", "entries", "log", "_table")

    def __init__(self, name: str, entries: list[tuple[bool, str]], log: bool = False) -> None:
        """entries: (negated, "address/prefix") pairs, already resolved."""
        self.name = name
        nets = [(neg, ipaddress.ip_network(net, strict=False)) for neg, net in entries]
        nets.sort(key=lambda e: (e[1].version, -e[1].prefixlen))
        self.entries = tuple(nets)
        self._table = tuple((net.version, int(net.netmask), int(net.network_address), not neg)
                            for neg, net in nets)
        self.log = log

    def match(self, ip: IP | None) -> bool:
        if ip is None:
            return False
        key = _addr_key(ip.addr)
        if key is None:
            return False
        version, value = key
        for ver, mask, net, result in self._table:
            if ver == version and value & mask == net:
                return result
        return False

    def match_log(self, ctx, ip: IP | None) -> bool:
        """match() for an ACL declared with +log: a VCL_acl record says how it went."""
        hit = self.match(ip)
        if hit:
            ctx.log.append(("VCL_acl", f'MATCH {self.name} "{ip}"'))
        else:
            ctx.log.append(("VCL_acl", f"NO_MATCH {self.name}"))
        return hit

    def __str__(self) -> str:
        return self.name


def resolve_acl_entry(addr: str, mask: int | None) -> list[str]:
    """The networks an ACL entry stands for: one literal address, or every address a name resolves to
    (done once at load, like VCC). Raises ValueError if the entry is not valid."""
    try:
        ip = ipaddress.ip_address(addr)
        if mask is not None and mask > ip.max_prefixlen:
            raise ValueError(f"Too wide mask (/{mask}) for IPv{ip.version}")
        return [f"{ip}/{mask if mask is not None else ip.max_prefixlen}"]
    except ValueError:
        if _looks_numeric(addr):
            raise
    try:
        infos = socket.getaddrinfo(addr, None, proto=socket.IPPROTO_TCP)
    except OSError as exc:
        raise LookupError(f"DNS lookup({addr}): {exc.strerror or exc}") from None
    out = []
    for info in infos:
        ip = ipaddress.ip_address(info[4][0].split("%")[0])
        prefix = mask if mask is not None else ip.max_prefixlen
        net = f"{ip}/{min(prefix, ip.max_prefixlen)}"
        if net not in out:
            out.append(net)
    return out


def _looks_numeric(addr: str) -> bool:
    return bool(re.fullmatch(r"[0-9.]+|[0-9a-fA-F:.]*:[0-9a-fA-F:.]*", addr))
