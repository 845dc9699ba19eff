"""VCL compile errors, reported like VCC: position, message, the source line and a caret."""

from __future__ import annotations

import re

from vcl.ast import Pos


class VCLError(Exception):
    """A VCL program that does not compile. str() is the full report, ready to print.

    The first line is `file:line:col: message`; then the offending source line with a caret under
    the column; then optional notes ("...called from"), each with its own position and caret.
    """

    def __init__(self, message: str, pos: Pos | None = None,
                 notes: list[tuple[str, Pos | None]] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.pos = pos
        self.notes = list(notes or [])
        self.sources: dict[str, str] = {}

    @property
    def filename(self) -> str | None:
        return self.pos.file if self.pos else None

    @property
    def line(self) -> int | None:
        return self.pos.line if self.pos else None

    @property
    def col(self) -> int | None:
        return self.pos.col if self.pos else None

    def attach(self, sources: dict[str, str]) -> VCLError:
        """Give the error the source texts it needs to quote lines (done once by the compiler)."""
        for name, text in sources.items():
            self.sources.setdefault(name, text)
        return self

    def _quote(self, pos: Pos) -> list[str]:
        text = self.sources.get(pos.file)
        if text is None:
            return []
        lines = text.split("\n")
        if not 1 <= pos.line <= len(lines):
            return []
        src = lines[pos.line - 1].rstrip("\r")
        # Keep tabs in the caret line so it lines up under the source line however it is shown.
        lead = "".join(c if c == "\t" else " " for c in src[: pos.col - 1])
        width = max(1, min(pos.length, len(src) - pos.col + 1))
        return [src, lead + "^" + "~" * (width - 1)]

    def __str__(self) -> str:
        out: list[str] = []
        if self.pos is None:
            out.append(self.message)
        else:
            # The first line of the message goes with the position, the rest after the quote.
            first, *rest = self.message.split("\n")
            out.append(f"{self.pos.file}:{self.pos.line}:{self.pos.col}: {first}")
            out.extend(self._quote(self.pos))
            out.extend(rest)
        for note, pos in self.notes:
            if pos is None:
                out.append(note)
            else:
                out.append(f"{pos.file}:{pos.line}:{pos.col}: {note}")
                out.extend(self._quote(pos))
        return "\n".join(out)


# a VCC token at the start of the text: a string, a name (VCC's ends at '.'), a number, a two-character
# operator, or one character
NEXT_TOKEN = re.compile(r'"[^"\n]*"?|\{"|[A-Za-z_][\w-]*|[0-9]+(?:\.[0-9]+)?|<<|>>|\+\+|--|==|!=|<=|>=|&&|\|\||!~|\+=|-=|\*=|/=|\S')
BLANKS = re.compile(r"(?:\s+|#[^\n]*|//[^\n]*|/\*[\s\S]*?\*/)*")


class MissingParenthesis(VCLError):
    """A function's name where VCC wants its '(' next. VCC names the token that follows, which only
    the source shows: the compiler calls at_next_token() with the sources."""

    def __init__(self, pos: Pos) -> None:
        super().__init__("Expected '(' got", pos)

    def at_next_token(self, sources: dict[str, str]) -> None:
        text = sources.get(self.pos.file) if self.pos is not None else None
        if text is None:
            return
        lines = text.split("\n")
        offset = sum(len(line) + 1 for line in lines[:self.pos.line - 1]) + self.pos.col - 1 + self.pos.length
        offset = BLANKS.match(text, offset).end()
        m = NEXT_TOKEN.match(text, offset)
        got = repr(m.group(0)) if m else "end of file"
        line = text.count("\n", 0, offset) + 1
        col = offset - (text.rfind("\n", 0, offset) + 1) + 1
        self.pos = Pos(self.pos.file, line, col, len(m.group(0)) if m else 1)
        self.message = f"Expected '(' got {got}"
        self.args = (self.message,)
