"""C printf formats for Print(): Python's % operator plus C's length modifiers and %p."""

from __future__ import annotations

import re

_SPEC = re.compile(
    r"%(?P<flags>[-+ #0]*)(?P<width>\*|\d+)?(?:\.(?P<prec>\*|\d+))?"
    r"(?P<len>hh|ll|[hljztLq])?(?P<conv>[diouxXeEfFgGcsp%])"
)


def cformat(fmt: str, args: tuple) -> str:
    """Format like C printf: "%zu", "%lld", "%p" work as in kvm_api.h programs."""
    out: list[str] = []
    new_args: list[object] = []
    pos = 0
    i = 0
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
                new_args.append(args[i])
                i += 1
        value = args[i] if i < len(args) else None
        i += 1
        if conv == "p":                # a pointer: an int as is, any other object by its identity
            conv = "s"
            value = hex(value if isinstance(value, int) else id(value))
        elif conv == "u":
            conv = "d"
        elif conv == "s" and isinstance(value, (bytes, bytearray)):
            value = bytes(value).decode("utf-8", "replace")
        new_args.append(value)
        out.append("%" + m["flags"] + width + ("." + prec if prec is not None else "") + conv)
    out.append(fmt[pos:].replace("%", "%%"))
    if i != len(args):
        raise TypeError(f"Print: format wants {i} arguments, got {len(args)}")
    return "".join(out) % tuple(new_args)
