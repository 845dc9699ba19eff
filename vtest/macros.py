"""Macro table and ${...} expansion (vtc(7) MACROS)."""
from __future__ import annotations

import email.utils
import threading
from collections.abc import Callable

from .errors import TestFailure


def _split_args(inner: str) -> list[str]:
    """${foo,bar,baz} == ${ foo bar baz }; arguments may be "quoted"."""
    out: list[str] = []
    i, n = 0, len(inner)
    while i < n:
        c = inner[i]
        if c in " \t,":
            i += 1
            continue
        if c == '"':
            j = inner.find('"', i + 1)
            if j < 0:
                raise TestFailure(f"Unterminated quote in macro ${{{inner}}}")
            out.append(inner[i + 1:j])
            i = j + 1
        else:
            j = i
            while j < n and inner[j] not in " \t,":
                j += 1
            out.append(inner[i:j])
            i = j
    return out


def _string_macro(args: list[str]) -> str:
    if not args:
        raise TestFailure("Missing action in string macro")
    if args[0] == "repeat":
        if len(args) != 3:
            raise TestFailure("repeat takes 2 arguments")
        try:
            count = int(args[1])
        except ValueError as e:
            raise TestFailure(f"Invalid repeat count: {args[1]}") from e
        return args[2] * count
    raise TestFailure(f"Unknown string macro action: {args[0]}")


def _date_macro(args: list[str]) -> str:
    return email.utils.formatdate(usegmt=True)


class Macros:
    """Thread-safe name -> value table; function macros take arguments."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._values: dict[str, str] = {}
        self._funcs: dict[str, Callable[[list[str]], str]] = {
            "string": _string_macro,
            "date": _date_macro,
        }
        self.ignore_unknown = False

    def define(self, name: str, value: str) -> None:
        with self._lock:
            self._values[name] = value

    def undefine(self, name: str) -> None:
        with self._lock:
            self._values.pop(name, None)

    def get(self, name: str) -> str | None:
        with self._lock:
            return self._values.get(name)

    def expand(self, text: str) -> str:
        if "${" not in text:
            return text
        out: list[str] = []
        i = 0
        while True:
            j = text.find("${", i)
            if j < 0:
                out.append(text[i:])
                break
            k = text.find("}", j + 2)
            if k < 0:
                raise TestFailure(f"Unterminated macro in: {text[j:j + 40]}")
            out.append(text[i:j])
            inner = text[j + 2:k]
            args = _split_args(inner)
            value: str | None = None
            if args:
                func = self._funcs.get(args[0])
                if func is not None:
                    value = func(args[1:])
                elif len(args) == 1:
                    value = self.get(args[0])
            if value is None:
                if not self.ignore_unknown:
                    raise TestFailure(f"Macro ${{{inner}}} not found")
                value = text[j:k + 1]
            out.append(value)
            i = k + 1
        return "".join(out)
