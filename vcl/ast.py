"""The VCL syntax tree: plain dataclasses, each carrying the source position it came from.

The parser builds these; vcl.checker annotates expressions with their VCL type (`type`) and
resolved meaning, and vcl.codegen turns the annotated tree into Python source.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class Pos:
    """Where a node starts: file name, 1-based line and column, and the token's length."""

    file: str
    line: int
    col: int
    length: int = 1


# ------------------------------------------------------------------ expressions


@dataclass(eq=False)
class Expr:
    pos: Pos
    # Filled by the checker: the VCL type name (STRING, INT, ...).
    type: str | None = field(default=None, init=False)
    # the '(' of the outermost parentheses it was written in, if any
    paren_pos: Pos | None = field(default=None, init=False)


@dataclass(eq=False)
class StringLit(Expr):
    value: str


@dataclass(eq=False)
class IpLit(StringLit):
    """A string constant the checker resolved to an IP: value is the address."""

    port: int = 80


@dataclass(eq=False)
class IntLit(Expr):
    value: int
    text: str
    # the token after it and its place: what VCC quotes where it wanted a BYTES unit there
    after: tuple[str, Pos] | None = None


@dataclass(eq=False)
class RealLit(Expr):
    value: float
    text: str
    after: tuple[str, Pos] | None = None     # as IntLit's


@dataclass(eq=False)
class DurationLit(Expr):
    seconds: float
    text: str


@dataclass(eq=False)
class BlobLit(Expr):
    value: bytes
    text: str


@dataclass(eq=False)
class BytesLit(Expr):
    value: float
    text: str


@dataclass(eq=False)
class BadToken(Expr):
    """Where the parser wanted an expression and found `text` (a token description). VCC reports
    it with the type it was looking for, which only the checker knows."""

    text: str


@dataclass(eq=False)
class UnitLit(Expr):
    """A number and a separate unit token (`4 KB`, `10 s`, `4 "X"`). VCC reads the unit as a BYTES
    or a duration unit depending on the type it wants, so the checker decides (to a DurationLit or
    BytesLit)."""

    number: float
    unit: str          # the unit token as written ('"X"' for a string in that place)
    unit_pos: Pos
    text: str


@dataclass(eq=False)
class Name(Expr):
    """A bare (possibly dotted) identifier: variable, backend, ACL, probe, bool, enum word."""

    name: str
    # as written, when `name` was lowered (true/false/default): enum words are case-sensitive
    written: str | None = None
    # written in parentheses: `(HEX)` is no ENUM word to VCC
    parens: bool = field(default=False, init=False)
    # Filled by the checker: what the name refers to.
    ref: object = field(default=None, init=False)


@dataclass(eq=False)
class Arg:
    pos: Pos
    value: Expr
    name: str | None = None  # a named argument: name = value


@dataclass(eq=False)
class Call(Expr):
    """name(args): regsub, a vmod function, an object method, or a STRING method like .lower()."""

    name: str
    args: list[Arg]
    # `expr.method()` on a computed value: the expression (name is then ".method").
    target: Expr | None = None
    # The closing parenthesis (where VCC reports a missing argument), when the parser kept it.
    close_pos: Pos | None = None
    # the ',' among and after the arguments (regsub's fourth one is where VCC wants its ')')
    commas: list[Pos] = field(default_factory=list)
    # where a "While compiling function call:" note ends when VCC stops at the ')' or (regsub) a
    # ',': the mark's length from the name, to the end of the token before it
    marks: dict[Pos, int] = field(default_factory=dict)
    # Filled by the checker.
    ref: object = field(default=None, init=False)
    bound: list[Expr | None] = field(default_factory=list, init=False)


@dataclass(eq=False)
class Neg(Expr):
    operand: Expr


@dataclass(eq=False)
class Not(Expr):
    operand: Expr


@dataclass(eq=False)
class BoolOp(Expr):
    op: str  # "&&" or "||"
    operands: list[Expr]


@dataclass(eq=False)
class Arith(Expr):
    """left op right for + - * / %; the checker decides between arithmetic and concatenation."""

    op: str
    left: Expr
    right: Expr
    op_pos: Pos | None = None


@dataclass(eq=False)
class Concat(Expr):
    """Made by the checker from `+` in string context: all parts are STRING-valued."""

    parts: list[Expr]


@dataclass(eq=False)
class Compare(Expr):
    op: str
    left: Expr
    right: Expr
    op_pos: Pos | None = None


@dataclass(eq=False)
class Match(Expr):
    """left ~ right / left !~ right: a regex match (STRING) or an ACL match (IP)."""

    op: str
    left: Expr
    right: Expr
    op_pos: Pos | None = None
    # Filled by the checker: "regex" or "acl", and the prepared regex source or ACL name.
    kind: str = field(default="", init=False)


@dataclass(eq=False)
class Convert(Expr):
    """Inserted by the checker: an implicit conversion of `operand` to `type`."""

    operand: Expr
    to: str


# ------------------------------------------------------------------ statements


@dataclass(eq=False)
class Stmt:
    pos: Pos


@dataclass(eq=False)
class Set(Stmt):
    target: str
    target_pos: Pos
    op: str
    value: Expr
    op_pos: Pos | None = None
    ref: object = field(default=None, init=False)


@dataclass(eq=False)
class Unset(Stmt):
    target: str
    target_pos: Pos
    ref: object = field(default=None, init=False)


@dataclass(eq=False)
class CallSub(Stmt):
    name: str
    name_pos: Pos


@dataclass(eq=False)
class Return(Stmt):
    action: str | None  # None: bare `return;`
    action_pos: Pos | None
    args: list[Arg]
    parens: bool = False  # `action(...)`, even with nothing inside


@dataclass(eq=False)
class If(Stmt):
    # [(condition, body)] for if / elseif ...; else_body for the final else.
    branches: list[tuple[Expr, list[Stmt]]]
    else_body: list[Stmt] | None


@dataclass(eq=False)
class Synthetic(Stmt):
    value: Expr


@dataclass(eq=False)
class HashData(Stmt):
    value: Expr


@dataclass(eq=False)
class Ban(Stmt):
    value: Expr


@dataclass(eq=False)
class New(Stmt):
    name: str
    name_pos: Pos
    call: Call


@dataclass(eq=False)
class InlineC(Stmt):
    """`C{ ... }C` (at top level or in a body): VCC's inline C, which cacheserver cannot run."""

    code: str = ""         # the text between C{ and }C


@dataclass(eq=False)
class ExprStmt(Stmt):
    """A vmod function or method call used as a statement."""

    call: Call


@dataclass(eq=False)
class IncludeStmt(Stmt):
    """`include "file";` inside a subroutine: replaced by the file's statements before checking."""

    path: str


@dataclass(eq=False)
class Block(Stmt):
    body: list[Stmt]


class Body(list):
    """The statements of a `{ }` block (a sub's, an if branch's, a bare block's). `ref` is where
    VCC's trace count for the block points: its first token, or the `}` of an empty block; `end`
    is its `}`."""

    __slots__ = ("ref", "end")

    def __init__(self, stmts=(), ref: Pos | None = None, end: Pos | None = None) -> None:
        super().__init__(stmts)
        self.ref = ref
        self.end = end


# ------------------------------------------------------------------ top level


@dataclass(eq=False)
class Attr:
    pos: Pos
    name: str
    value: object  # Expr, list[StringLit] (probe .request), or list[Attr] (inline probe)


@dataclass(eq=False)
class VclVersion:
    pos: Pos
    version: str
    version_pos: Pos | None = None     # the number's


@dataclass(eq=False)
class Import:
    pos: Pos
    name: str
    name_pos: Pos


@dataclass(eq=False)
class Include:
    pos: Pos
    path: str


@dataclass(eq=False)
class Backend:
    pos: Pos
    name: str
    name_pos: Pos
    attrs: list[Attr] | None  # None: `backend NAME none;`
    resolved: object = None   # vcl.vss.Resolved: the address VCC found for .host


@dataclass(eq=False)
class Probe:
    pos: Pos
    name: str
    name_pos: Pos
    attrs: list[Attr]


@dataclass(eq=False)
class AclEntry:
    pos: Pos
    negated: bool
    addr: str
    mask: int | None
    optional: bool  # written in parentheses: ignored if the name does not resolve
    mask_pos: Pos | None = None
    addr_pos: Pos | None = None
    slash_pos: Pos | None = None


@dataclass(eq=False)
class Acl:
    pos: Pos
    name: str
    name_pos: Pos
    flags: list[str]
    entries: list[AclEntry]


@dataclass(eq=False)
class Sub:
    pos: Pos
    name: str
    name_pos: Pos
    body: list[Stmt]
    builtin: bool = False  # defined by vcl/builtin.vcl


@dataclass(eq=False)
class Program:
    items: list[object]
