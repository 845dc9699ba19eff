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

    __slots__ = ("name", "entries", "log", "_table", "_shown")

    def __init__(self, name: str, entries: list[tuple], log: bool = False) -> None:
        """entries: (negated, "address/prefix"[, how a log record names it]), already resolved."""
        self.name = name
        nets = [(e[0], ipaddress.ip_network(e[1], strict=False), e[2] if len(e) > 2 else f'"{e[1]}"')
                for e in entries]
        nets.sort(key=lambda e: (e[1].version, -e[1].prefixlen))
        self.entries = tuple((neg, net) for neg, net, _ in nets)
        self._table = tuple((net.version, int(net.netmask), int(net.network_address), not neg)
                            for neg, net, _ in nets)
        self._shown = tuple(shown for _, _, shown in nets)
        self.log = log

    def _find(self, ip: IP | None) -> int:
        """The index of the entry that decides for ip, or -1."""
        if ip is None:
            return -1
        key = _addr_key(ip.addr)
        if key is None:
            return -1
        version, value = key
        for i, (ver, mask, net, _) in enumerate(self._table):
            if ver == version and value & mask == net:
                return i
        return -1

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
        """match() for an ACL declared with +log: a VCL_acl record names the entry, as VCC wrote it."""
        i = self._find(ip)
        if i < 0:
            ctx.log.append(("VCL_acl", f"NO_MATCH {self.name}"))
            return False
        hit = self._table[i][3]
        ctx.log.append(("VCL_acl", f"{'MATCH' if hit else 'NEG_MATCH'} {self.name} {self._shown[i]}"))
        return hit

    def __str__(self) -> str:
        return self.name


class AclMaskError(ValueError):
    """The /mask is wider than the address (VCC reports it at the mask)."""


def resolve_acl_entry(addr: str, mask: int | None) -> list[str]:
    """The networks an ACL entry stands for, as "address/prefix" (the address keeps its host bits;
    the checker looks at them). Done once at load, like VCC: first IPv4 network notation ("10.1.2"
    is 10.1.2.0/24), then getaddrinfo, so a name gives every address it resolves to.
    Raises AclMaskError for a mask wider than the address and LookupError when nothing resolves."""
    net = _net_notation(addr)
    if net is not None:
        ip, default_mask = net
        return [_with_mask(ip, mask if mask is not None else default_mask)]
    try:
        infos = socket.getaddrinfo(addr, None, proto=socket.IPPROTO_TCP)
    except OSError as exc:
        raise LookupError(f"DNS lookup({addr}): {exc.strerror or exc}") from None
    except UnicodeError:   # an empty or too long label: getaddrinfo() would not know the name either
        raise LookupError(f"DNS lookup({addr}): Name or service not known") from None
    out = []
    for info in infos:
        ip = ipaddress.ip_address(info[4][0].split("%")[0])
        entry = _with_mask(ip, mask if mask is not None else ip.max_prefixlen)
        if entry not in out:
            out.append(entry)
    return out


def _with_mask(ip: ipaddress.IPv4Address | ipaddress.IPv6Address, mask: int) -> str:
    if mask > ip.max_prefixlen:
        raise AclMaskError(f"Too wide mask (/{mask}) for IPv{ip.version} address")
    return f"{ip}/{mask}"


def _net_notation(addr: str) -> tuple[ipaddress.IPv4Address, int] | None:
    """vcc_acl_try_netnotation: one to four dot-separated decimal bytes, missing ones zero; the
    default mask covers the bytes given."""
    parts = addr.split(".")
    if len(parts) > 4 or not all(re.fullmatch(r"[0-9]+", p) and int(p) <= 255 for p in parts):
        return None
    octets = [int(p) for p in parts] + [0] * (4 - len(parts))
    return ipaddress.IPv4Address(bytes(octets)), 8 * len(parts)
