"""vtc(7) tokenising: one command per line; words, "strings" with escapes, {blocks}; # comments."""
from __future__ import annotations

from dataclasses import dataclass

from .errors import TestFailure

_WS = " \t\r\f\v"


@dataclass
class Command:
    line: int
    tokens: list[str]


def _backslash(text: str, i: int) -> tuple[str, int]:
    """Decode the escape starting at text[i] == '\\'; return (char, chars consumed)."""
    c = text[i + 1] if i + 1 < len(text) else ""
    simple = {"n": "\n", "r": "\r", "t": "\t", '"': '"', "\\": "\\"}
    if c in simple:
        return simple[c], 2
    if c == "x":
        digits = ""
        j = i + 2
        while j < len(text) and len(digits) < 2 and text[j] in "0123456789abcdefABCDEF":
            digits += text[j]
            j += 1
        if digits:
            return chr(int(digits, 16)), 2 + len(digits)
    if c and c in "01234567":
        digits = ""
        j = i + 1
        while j < len(text) and len(digits) < 3 and text[j] in "01234567":
            digits += text[j]
            j += 1
        return chr(int(digits, 8)), 1 + len(digits)
    # Unknown escapes keep the backslash, as VAV_BackSlash leaves them.
    return "\\", 1


def split_commands(text: str, first_line: int = 1) -> list[Command]:
    """Split a script (top-level or spec block) into commands of tokens, not yet macro-expanded."""
    cmds: list[Command] = []
    i, n, line = 0, len(text), first_line
    while i < n:
        c = text[i]
        if c == "\n":
            line += 1
            i += 1
            continue
        if c in _WS:
            i += 1
            continue
        if c == "#":
            while i < n and text[i] != "\n":
                i += 1
            continue
        start_line = line
        toks: list[str] = []
        while i < n:
            c = text[i]
            if c == "\n":
                break
            if c in _WS:
                i += 1
                continue
            if c == "\\" and text.startswith("\n", i + 1):
                i += 2
                line += 1
                continue
            if c == "\\" and text.startswith("\r\n", i + 1):
                i += 3
                line += 1
                continue
            if c == "{":
                depth, j = 0, i
                while j < n:
                    if text[j] == "{":
                        depth += 1
                    elif text[j] == "}":
                        depth -= 1
                        if depth == 0:
                            break
                    j += 1
                if j >= n:
                    raise TestFailure(f"line {start_line}: unterminated {{block}}")
                block = text[i + 1:j]
                toks.append(block)
                line += block.count("\n")
                i = j + 1
            elif c == '"':
                buf: list[str] = []
                j = i + 1
                while True:
                    if j >= n or text[j] == "\n":
                        raise TestFailure(f"line {start_line}: unterminated quoted string")
                    if text[j] == '"':
                        break
                    if text[j] == "\\":
                        ch, used = _backslash(text, j)
                        buf.append(ch)
                        j += used
                    else:
                        buf.append(text[j])
                        j += 1
                toks.append("".join(buf))
                i = j + 1
            else:
                j = i
                while j < n and text[j] not in _WS and text[j] != "\n":
                    j += 1
                toks.append(text[i:j])
                i = j
        if toks:
            cmds.append(Command(start_line, toks))
    return cmds
