"""C printf formats for Print(): Python's % operator plus C's length modifiers and %p."""

from __future__ import annotations

import functools
import re

_SPEC = re.compile(
    r"%(?P<flags>[-+ #0]*)(?P<width>\*|\d+)?(?:\.(?P<prec>\*|\d+))?"
    r"(?P<len>hh|ll|[hljztLq])?(?P<conv>[diouxXeEfFgGcsp%])"
)

# What an argument needs before Python's % takes it
_AS_IS, _POINTER, _TEXT = 0, 1, 2


@functools.lru_cache(maxsize=512)
def _compile(fmt: str) -> tuple[str, int, tuple[tuple[int, int], ...]]:
    """A C format as a Python %-format, its number of arguments and the (index, kind) of those
    that need converting; cached, as a program prints with a few fixed formats (the docs' hello
    prints one per request)."""
    out: list[str] = []
    kinds: list[int] = []
    pos = 0
    for m in _SPEC.finditer(fmt):
        out.append(fmt[pos:m.start()].replace("%", "%%"))
        pos = m.end()
        conv = m["conv"]
        if conv == "%":
            out.append("%%")
            continue
        width, prec = m["width"] or "", m["prec"]
        for star in (width, prec):
            if star == "*":            # '*' takes its number from the arguments, as in C
                kinds.append(_AS_IS)
        kind = _AS_IS
        if conv == "p":                # a pointer: an int as is, any other object by its identity
            conv, kind = "s", _POINTER
        elif conv == "u":
            conv = "d"
        elif conv == "s":
            kind = _TEXT
        kinds.append(kind)
        out.append("%" + m["flags"] + width + ("." + prec if prec is not None else "") + conv)
    out.append(fmt[pos:].replace("%", "%%"))
    return "".join(out), len(kinds), tuple((i, k) for i, k in enumerate(kinds) if k != _AS_IS)


def cformat(fmt: str, args: tuple) -> str:
    """Format like C printf: "%zu", "%lld", "%p" work as in kvm_api.h programs."""
    pyfmt, wanted, converted = _compile(fmt)
    if wanted != len(args):
        raise TypeError(f"Print: format wants {wanted} arguments, got {len(args)}")
    if converted:
        values = list(args)
        for i, kind in converted:
            values[i] = _convert(kind, values[i])
        args = tuple(values)
    return pyfmt % args


def _convert(kind: int, value: object) -> object:
    if kind == _POINTER:
        return hex(value if isinstance(value, int) else id(value))
    if kind == _TEXT and isinstance(value, (bytes, bytearray)):
        return bytes(value).decode("utf-8", "replace")
    return value
