"""VCL_trace: VCC's numbering of the blocks a VCL program runs.

VCC puts a count (VPI_count) at the start of every `{ }` block of every subroutine (sub bodies, if
and else branches, bare blocks), and after every if statement that has no final else, numbered
from 1 in the order VCC meets them in the token stream:
the main file with its includes spliced in, then the built-in VCL. Each number refers to the block's
first token (the `}` of an empty block; for the one after an if, the token after the if) as
source index, line and column. varnishd logs `VCL_trace <vcl> <number> <source>.<line>.<column>` each
time it passes a count, when the VCL_trace tag is not masked.

Sources are indexed in the order VCC reads them: the main file 0, then each included file as its
include is met, the built-in VCL last. Columns count bytes, a tab moving to the next multiple of 8,
as VCC's token coordinates.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from vcl import ast


def vcc_column(line: str, col: int) -> int:
    """The 1-based column VCC gives the character at 1-based `col` of `line`."""
    pos = 0
    for ch in line[:col - 1]:
        if ch == "\t":
            pos = (pos & ~7) + 8
        else:
            pos += len(ch.encode("utf-8", "surrogateescape"))
    return pos + 1


def number_blocks(items: Iterable[object], sources: Mapping[str, str]) -> tuple[dict[int, int], list[str]]:
    """({id(block body or if statement): number}, refs) for every count in the subroutines of
    `items` (in order, the built-in VCL's included); refs[n] is "n source.line.column" (refs[0]
    unused)."""
    index = {name: i for i, name in enumerate(sources)}
    lines: dict[str, list[str]] = {}
    numbers: dict[int, int] = {}
    refs = [""]

    def ref_of(pos: ast.Pos) -> str:
        text = lines.get(pos.file)
        if text is None:
            text = lines[pos.file] = sources.get(pos.file, "").split("\n")
        line = text[pos.line - 1] if 0 < pos.line <= len(text) else ""
        return f"{index.get(pos.file, 0)}.{pos.line}.{vcc_column(line, pos.col)}"

    def count(node: object, ref: ast.Pos | None) -> None:
        if ref is not None:
            n = len(refs)
            numbers[id(node)] = n
            refs.append(f"{n} {ref_of(ref)}")

    def walk(body: list) -> None:
        count(body, getattr(body, "ref", None))
        for i, stmt in enumerate(body):
            if isinstance(stmt, ast.If):
                for _, branch in stmt.branches:
                    walk(branch)
                if stmt.else_body is not None:
                    walk(stmt.else_body)
                else:
                    # an if with no final else is followed by a count of its own (vcc_IfStmt),
                    # pointing at the next token: the next statement or the block's `}`
                    count(stmt, body[i + 1].pos if i + 1 < len(body) else getattr(body, "end", None))
            elif isinstance(stmt, ast.Block):
                walk(stmt.body)

    for item in items:
        if isinstance(item, ast.Sub):
            walk(item.body)
    return numbers, refs
