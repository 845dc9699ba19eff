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
def _compile(fmt: str) -> tuple[str, int, tuple[int, ...], tuple[int, ...]]:
    """A C format as a Python %-format, its number of arguments, and the positions of its pointer
    (%p) and text (%s) arguments, which need converting; cached, as a program prints with a few fixed
    formats (the docs' hello prints one per request)."""
    out: list[str] = []
    count = 0
    pointers: list[int] = []
    texts: list[int] = []
    pos = 0
    for m in _SPEC.finditer(fmt):
        out.append(fmt[pos:m.start()].replace("%", "%%"))
        pos = m.end()
        conv = m["conv"]
        if conv == "%":
            out.append("%%")
            continue
        width, prec = m["width"] or "", m["prec"]
        count += (width == "*") + (prec == "*")     # '*' takes its number from the arguments, as in C
        if conv == "p":                # a pointer: an int as is, any other object by its identity
            conv = "s"
            pointers.append(count)
        elif conv == "u":
            conv = "d"
        elif conv == "s":
            texts.append(count)
        count += 1
        out.append("%" + m["flags"] + width + ("." + prec if prec is not None else "") + conv)
    out.append(fmt[pos:].replace("%", "%%"))
    return "".join(out), count, tuple(pointers), tuple(texts)


def cformat(fmt: str, args: tuple) -> str:
    """Format like C printf: "%zu", "%lld", "%p" work as in kvm_api.h programs."""
    # Runs once per Print, so per request in the docs' hello: the conversions are inline.
    pyfmt, wanted, pointers, texts = _compile(fmt)
    if wanted != len(args):
        raise TypeError(f"Print: format wants {wanted} arguments, got {len(args)}")
    if pointers or texts:
        values = list(args)
        for i in pointers:
            value = values[i]
            values[i] = hex(value if isinstance(value, int) else id(value))
        for i in texts:
            value = values[i]
            if isinstance(value, (bytes, bytearray)):
                values[i] = bytes(value).decode("utf-8", "replace")
        args = tuple(values)
    return pyfmt % args
