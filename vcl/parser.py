"""VCL source text -> vcl.ast, with `include` resolved. Lark (LALR, contextual lexer) does the parsing."""

from __future__ import annotations

import base64
import binascii
import os
import re
from functools import lru_cache
from pathlib import Path

from lark import Lark, Token, Transformer, Tree
from lark.exceptions import UnexpectedCharacters, UnexpectedEOF, UnexpectedInput, UnexpectedToken, VisitError

import vmods
from vcl import ast, symbols
from vcl.errors import BLANKS, NEXT_TOKEN, VCLError
from vcl.types import BYTES_UNITS, DURATION_UNITS

# How Lark's terminal names read in an error message.
_TOKEN_WORDS = {
    "NAME": "ID", "STRING": "string", "INT": "CNUM", "FLOAT": "FNUM",
    "DURATION": "duration", "BYTES": "bytes", "$END": "end of file", "ASSIGN": "'='",
    "CMPOP": "comparison", "MATCHOP": "'~'", "ADDOP": "'+'", "MULOP": "'*'", "_ELIF": "'elseif'",
}


@lru_cache(maxsize=1)
def _lark() -> Lark:
    grammar = (Path(__file__).with_name("grammar.lark")).read_text()
    # The grammar is built once per process; every load reuses the LALR tables.
    return Lark(grammar, parser="lalr", lexer="contextual", maybe_placeholders=True,
                start=["start", "stmts"], lexer_callbacks={"COMMENT": _check_comment})


class _NestedComment(Exception):
    """A /* comment holding another /* (VCC refuses it); carries the two tokens' positions."""

    def __init__(self, tok: Token, inner: int) -> None:
        super().__init__(tok)
        self.tok = tok
        self.inner = inner


def _check_comment(tok: Token) -> Token:
    if tok.startswith("/*"):
        inner = tok.find("/*", 2)
        if inner >= 0:
            raise _NestedComment(tok, inner)
    return tok


# A mark's length that reaches the end of its line, however long the line is.
_TO_LINE_END = 1 << 16

# What lies between two tokens, and one token as VCC cuts them (an ID has no '.'; two-character
# operators whole)
_BLANKS_AND_COMMENTS = re.compile(r"(?:\s+|/\*.*?\*/|//[^\n]*|#[^\n]*)*", re.S)
_VCC_TOKEN = re.compile(r'"""(?:.|\n)*?"""|\{"(?:.|\n)*?"\}|"[^"\n]*"|[A-Za-z_][A-Za-z0-9_-]*|[0-9]+(?:\.[0-9]*)?'
                        r"|==|!=|<=|>=|&&|\|\||\+=|-=|\*=|/=|<<|>>|.")


def _tok_pos(tok: Token, file: str) -> ast.Pos:
    length = len(tok.value) if "\n" not in tok.value else 1
    return ast.Pos(file, tok.line, tok.column, length)


def _sub_name(tok: Token) -> str:
    """Subroutine names are matched case-insensitively, as VCC does (sub VCL_RECV, sub Foo + call foo)."""
    return str(tok).lower()


def _unquote(text: str) -> str:
    if text.startswith('"""'):
        return text[3:-3]
    if text.startswith('{"'):
        return text[2:-2]
    return text[1:-1]


class _Args(list):
    """A call's arguments; `commas` the ',' tokens among and after them, `trailing` the position of
    a ',' after the last one, if any."""

    commas: list[Token] = []
    trailing: ast.Pos | None = None


def _no_trailing_comma(args: list) -> None:
    """regsub()/regsuball() and return actions want their ')' where a vmod call may have a ','."""
    at = getattr(args, "trailing", None)
    if at is not None:
        raise VCLError("Expected ')' got ','", at)


class _ToAst(Transformer):
    """Lark tree -> vcl.ast nodes. A statement's position is its keyword's (keywords are named
    terminals, so they stay in the tree; no per-node position tracking is needed)."""

    def __init__(self, file: str, source: str, bad: ast.BadToken | None = None) -> None:
        super().__init__()
        self.file = file
        self.source = source     # the text parsed (the tokens' offsets are into it)
        self.bad = bad     # what _BAD_TOKEN stands for in a recovered parse

    def _p(self, tok: Token) -> ast.Pos:
        return _tok_pos(tok, self.file)

    def _call(self, name_tok: Token, name: str, args: _Args | None, rpar: Token) -> ast.Call:
        """A call, with what VCC's "While compiling function call:" note marks where it stops at the
        ')' or (regsub, which reads three arguments) at a ','."""
        commas = args.commas if args is not None else []
        stops = [rpar] + (commas if name in ("regsub", "regsuball") else [])
        marks = {self._p(tok): self._mark(name_tok, tok) for tok in stops}
        return ast.Call(self._p(name_tok), name, args or [], close_pos=self._p(rpar),
                        commas=[self._p(c) for c in commas], marks=marks)

    def _mark(self, first: Token, stop: Token) -> int:
        """How many characters VCC marks from `first` to the end of the last token before `stop`
        (vcc_ErrWhere2): to the end of `first`'s line when that token is on a later line."""
        text = self.source[first.start_pos:stop.start_pos]
        end = 0
        for m in _SCAN.finditer(text):
            piece = m.group()
            if not piece.startswith(("/*", "//", "#")) and piece.strip():
                end = m.start() + len(piece.rstrip())
        return _TO_LINE_END if "\n" in text[:end] else end

    # -------------------------------------------------------------- top level

    def start(self, items):
        return ast.Program(list(items))

    def stmts(self, items):
        return ast.Program([i for i in items if isinstance(i, ast.Stmt)])

    def vcl_version(self, children):
        kw, version = children
        return ast.VclVersion(self._p(kw), str(version), self._p(version))

    def import_(self, children):
        kw, name = children[0], children[1]
        return ast.Import(self._p(kw), str(name), self._p(name))

    def include(self, children):
        kw, path = children
        return ast.Include(self._p(kw), _unquote(str(path)))

    def backend(self, children):
        kw, name, *rest = children
        attrs = [c for c in rest if isinstance(c, ast.Attr)]
        return ast.Backend(self._p(kw), str(name), self._p(name), attrs)

    def backend_none(self, children):
        kw, name = children
        return ast.Backend(self._p(kw), str(name), self._p(name), None)

    def probe(self, children):
        kw, name, *rest = children
        attrs = [c for c in rest if isinstance(c, ast.Attr)]
        return ast.Probe(self._p(kw), str(name), self._p(name), attrs)

    def attr(self, children):
        name, value = children
        return ast.Attr(self._p(name), str(name), value)

    def strlist(self, children):
        return [ast.StringLit(self._p(t), _unquote(str(t))) for t in children]

    def inline_probe(self, children):
        return [c for c in children if isinstance(c, ast.Attr)]

    def acl(self, children):
        kw, name, *rest = children
        flags = [c for c in rest if isinstance(c, str) and not isinstance(c, Token)]
        entries = [c for c in rest if isinstance(c, ast.AclEntry)]
        return ast.Acl(self._p(kw), str(name), self._p(name), flags, entries)

    def acl_flag(self, children):
        sign, name = children
        # VCC reads "+log" as one token: a space after the sign is not a flag.
        if name.start_pos != sign.end_pos:
            raise VCLError("Expected a flag at:", self._p(sign))
        if str(name) not in ACL_FLAGS:
            raise VCLError("Unknown ACL flag:", self._p(name))
        return str(sign) + str(name)

    def acl_entry(self, children):
        negate, addr, slash, mask = children
        return self._acl_entry(negate, None, addr, slash, mask, False)

    def acl_optional(self, children):
        outer, inner, addr, slash, mask = children
        return self._acl_entry(outer, inner, addr, slash, mask, True)

    def _acl_entry(self, outer, inner, addr, slash, mask, optional: bool) -> ast.AclEntry:
        if outer is not None and inner is not None:
            raise VCLError(f"Expected CSTR got {_describe(inner)}", self._p(inner))
        negate = outer if outer is not None else inner
        first = negate if negate is not None else addr
        return ast.AclEntry(self._p(first), negate is not None, _unquote(str(addr)),
                            int(mask) if mask is not None else None, optional,
                            self._p(mask) if mask is not None else None, self._p(addr),
                            self._p(slash) if slash is not None else None)

    def inline_c(self, children):
        return ast.InlineC(self._p(children[0]), str(children[0])[2:-2])

    def sub(self, children):
        kw, name, body = children
        return ast.Sub(self._p(kw), _sub_name(name), self._p(name), body.body)

    # -------------------------------------------------------------- statements

    def block(self, children):
        body = ast.Body(c for c in children if isinstance(c, ast.Stmt))
        body.end = self._p(children[-1])
        body.ref = body[0].pos if body else body.end
        return ast.Block(self._p(children[0]), body)

    def set_(self, children):
        kw, name, op, value = children
        return ast.Set(self._p(kw), str(name), self._p(name), str(op), value, self._p(op))

    def unset_(self, children):
        kw, name = children
        return ast.Unset(self._p(kw), str(name), self._p(name))

    def call_(self, children):
        kw, name = children
        return ast.CallSub(self._p(kw), _sub_name(name), self._p(name))

    def return_(self, children):
        kw = children[0]
        if len(children) == 1 or getattr(children[1], "type", None) == "SEMICOLON":
            # bare `return;`: the ';' is where VCC wanted '(' (action_pos)
            semi = children[1] if len(children) > 1 else None
            return ast.Return(self._p(kw), None, self._p(semi) if semi is not None else None, [])
        name, args, parens = children[1]
        return ast.Return(self._p(kw), str(name), self._p(name), args, parens)

    def action(self, children):
        name = children[0]
        args = children[1] if len(children) > 1 and children[1] is not None else []
        _no_trailing_comma(args)
        return (name, args, len(children) > 1)

    def if_(self, children):
        kw, cond, body, *rest = children
        branches = [(cond, body.body)]
        else_body = None
        for item in rest:
            if item is None:
                continue
            if isinstance(item, tuple):
                branches.append(item)
            else:
                else_body = item
        return ast.If(self._p(kw), branches, else_body)

    def elif_(self, children):
        cond, body = children[-2], children[-1]
        return (cond, body.body)

    def else_(self, children):
        return children[0].body

    def synthetic_(self, children):
        kw, value = children
        return ast.Synthetic(self._p(kw), value)

    def hash_data_(self, children):
        kw, value = children
        return ast.HashData(self._p(kw), value)

    def ban_(self, children):
        kw, value = children
        return ast.Ban(self._p(kw), value)

    def new_(self, children):
        kw, name, func, args, rpar = children
        call = self._call(func, str(func), args, rpar)
        return ast.New(self._p(kw), str(name), self._p(name), call)

    def include_stmt(self, children):
        kw, path = children
        return ast.IncludeStmt(self._p(kw), _unquote(str(path)))

    def call_stmt(self, children):
        func, args, rpar = children
        return ast.ExprStmt(self._p(func), self._call(func, str(func), args, rpar))

    # -------------------------------------------------------------- expressions

    def args(self, children):
        out = _Args(c for c in children if c is not None and not isinstance(c, Token))
        out.commas = [c for c in children if isinstance(c, Token)]
        out.trailing = self._p(out.commas[-1]) if len(out.commas) == len(out) else None
        return out

    def trailing_comma(self, children):
        return children[0]

    def arg(self, children):
        value = children[0]
        return ast.Arg(value.pos, value)

    def named_arg(self, children):
        name, value = children
        if str(name) == _BAD_TOKEN and self.bad is not None:
            return ast.Arg(self.bad.pos, self.bad)      # the unexpected token stood before the '='
        return ast.Arg(self._p(name), value, str(name))

    def string(self, children):
        tok = children[0]
        return ast.StringLit(self._p(tok), _unquote(str(tok)))

    def _number(self, tok: Token, text: str) -> None:
        """VCC's limits on a literal: 15 digits for an integer, 12.3 for a real."""
        whole, dot, frac = text.partition(".")
        if not dot and len(whole) > 15:
            raise VCLError("Too many digits for integer.", self._p(tok))
        if dot and (len(whole) > 12 or len(frac) > 3):
            raise VCLError("Too many digits for real.", self._p(tok))

    def int_(self, children):
        tok = children[0]
        self._number(tok, str(tok))
        return ast.IntLit(self._p(tok), int(tok), str(tok), self._after(tok))

    def real(self, children):
        tok = children[0]
        self._number(tok, str(tok))
        return ast.RealLit(self._p(tok), float(tok), str(tok), self._after(tok))

    def _after(self, tok: Token) -> tuple[str, ast.Pos] | None:
        """The token that follows `tok` in the source, as VCC would quote it, and its place."""
        skipped = _BLANKS_AND_COMMENTS.match(self.source, tok.end_pos)
        m = _VCC_TOKEN.match(self.source, skipped.end())
        if m is None:
            return None
        gap = skipped.group()
        if "\n" in gap:
            line, col = tok.end_line + gap.count("\n"), len(gap) - gap.rfind("\n")
        else:
            line, col = tok.end_line, tok.end_column + len(gap)
        return m.group(), ast.Pos(self.file, line, col, len(m.group()))

    def duration(self, children):
        tok = children[0]
        text = str(tok)
        unit = text.lstrip("0123456789.")
        self._number(tok, text[: -len(unit)])
        return ast.DurationLit(self._p(tok), float(text[: -len(unit)]) * DURATION_UNITS[unit], text)

    def bytes_(self, children):
        tok = children[0]
        text = str(tok)
        unit = text.lstrip("0123456789.")
        self._number(tok, text[: -len(unit)])
        return ast.BytesLit(self._p(tok), float(text[: -len(unit)]) * BYTES_UNITS[unit], text)

    def blob_lit(self, children):
        tok = children[0]
        text = str(tok)
        try:
            value = base64.b64decode(text[1:-1], validate=True)
        except (binascii.Error, ValueError):
            raise VCLError("Illegal BLOB character:", self._p(tok)) from None
        return ast.BlobLit(self._p(tok), value, text)

    def name(self, children):
        tok = children[0]
        text = str(tok)
        if text.lower() in ("true", "false", "default"):
            # symbols, which VCC matches case-insensitively
            return ast.Name(self._p(tok), text.lower(), written=text)
        if text == _BAD_TOKEN and self.bad is not None:
            return self.bad
        return ast.Name(self._p(tok), text)

    def call(self, children):
        tok, args, rpar = children
        name = str(tok)
        if name == _BAD_TOKEN and self.bad is not None:
            return self.bad          # the unexpected token stood where the function's name is
        if name.lower() in ("regsub", "regsuball"):
            name = name.lower()
        return self._call(tok, name, args, rpar)

    def paren(self, children):
        lpar, e = children
        if isinstance(e, ast.Name):
            e.parens = True
        e.paren_pos = self._p(lpar)
        return e

    def spaced_unit(self, children):
        """`10 s`: VCC takes a number and its unit as two tokens, so a space between them is fine."""
        number, unit = children
        self._number(number, str(number))
        return ast.UnitLit(self._p(number), float(number), str(unit), self._p(unit), f"{number}{unit}")

    def method(self, children):
        """`(expression).lower()`: a method on the value of any expression."""
        target, name, args = children
        return ast.Call(self._p(name), f".{name}", args or [], target=target)

    def neg(self, children):
        minus, operand = children
        return ast.Neg(self._p(minus), operand)

    def not_(self, children):
        bang, operand = children
        return ast.Not(self._p(bang), operand)

    def or_(self, children):
        operands = [c for c in children if not isinstance(c, Token)]
        if len(operands) == 1:
            return operands[0]
        return ast.BoolOp(operands[0].pos, "||", operands)

    def and_(self, children):
        operands = [c for c in children if not isinstance(c, Token)]
        if len(operands) == 1:
            return operands[0]
        return ast.BoolOp(operands[0].pos, "&&", operands)

    def add(self, children):
        return self.arith(children)

    def mul(self, children):
        return self.arith(children)

    def arith(self, children):
        left = children[0]
        for i in range(1, len(children), 2):
            op = children[i]
            left = ast.Arith(left.pos, str(op), left, children[i + 1], self._p(op))
        return left

    def compare(self, children):
        left, op, right = children
        return ast.Compare(left.pos, str(op), left, right, self._p(op))

    def match(self, children):
        left, op, right = children
        return ast.Match(left.pos, str(op), left, right, self._p(op))


ACL_FLAGS = ("log", "pedantic", "table")


# Two-character tokens of VCC's lexer that ours reads as one character and the next.
_VCC_PAIRS = frozenset({"<<", ">>", "++", "--", "&&", "||", "!=", "!~", "==", "<=", ">=", "+=", "-=", "*=", "/="})


def _describe(tok: Token, source: str | None = None) -> str:
    if tok.type == "$END":
        return "end of file"
    text = str(tok)
    if source is not None and len(text) == 1 and source[tok.start_pos:tok.start_pos + 2] in _VCC_PAIRS:
        text = source[tok.start_pos:tok.start_pos + 2]      # VCC names the whole token
    elif tok.type != "STRING":
        # VCC's lexer ends a name at a '.' (req.url is req . url) and a number at its unit (10s)
        m = _VCC_FIRST_TOKEN.match(text)
        if m:
            text = m.group(0)
    return repr(text)


_VCC_FIRST_TOKEN = re.compile(r"[A-Za-z][A-Za-z0-9_-]*|[0-9]+(?:\.[0-9]+)?")


def _expected(names: set[str]) -> str:
    lark = _lark()
    words = []
    for name in sorted(names):
        if name in _TOKEN_WORDS:
            words.append(_TOKEN_WORDS[name])
            continue
        try:
            term = lark.get_terminal(name)
        except KeyError:
            words.append(name)
            continue
        value = term.pattern.value
        words.append(f"'{value}'" if term.pattern.type == "str" else name.lower())
    return ", ".join(sorted(set(words)))


@lru_cache(maxsize=8)
def _cached_tree(source: str) -> Tree:
    return _lark().parse(source, start="start")


# statements VCC parses by their keyword, each wanting a '(' next; the else-ifs only after an if's block
_PAREN_KEYWORDS = frozenset({"if", "synthetic", "return", "hash_data", "ban"})
_ELSE_IFS = frozenset({"elsif", "elseif", "elif"})
_STATEMENT_NAME = re.compile(r"(?:^|[;{}])\s*([A-Za-z][\w.-]*)\s*$")


def _is_declared_symbol(source: str, name: str) -> bool:
    """A reserved word, or a sub, ACL, backend, probe or vmod this VCL declares (so no 'not found')."""
    if name.lower() in symbols.VCC_RESERVED or name.lower() in symbols.VCC_FUNCS:
        return True
    word = re.escape(name)
    return re.search(rf"(?:^|[\s;}}])(?:sub|acl|backend|probe|import)\s+{word}(?![\w.-])", source) is not None


def _check_statement_name(source: str, filename: str, tok: Token) -> None:
    """A statement that is a bare name without '(': VCC says what the name is, not what it wanted
    ("Symbol not found: 'remove'"); a known vmod function keeps "Expected '(' got ...".
    Raises that VCLError, or returns."""
    m = _STATEMENT_NAME.search(source, 0, tok.start_pos)
    if m is None:
        return
    name, at = m.group(1), m.start(1)
    if name.lower() in _PAREN_KEYWORDS or (name.lower() in _ELSE_IFS and source[:at].rstrip().endswith("}")):
        return              # VCC's own keyword: it wanted the '(' (the caller's message)
    pos = ast.Pos(filename, source.count("\n", 0, at) + 1, at - source.rfind("\n", 0, at), len(name))
    if symbols.lookup(name) is not None or _is_declared_symbol(source, name):
        raise VCLError("Symbol cannot be used here.", _tok_pos(tok, filename))
    if "." not in name and re.search(rf"\bnew\s+{re.escape(name)}\s*=", source, re.IGNORECASE):
        # an object instance alone: VCC wants one of its methods
        raise VCLError(f"Expected '.' got {_describe(tok, source)}", _tok_pos(tok, filename))
    head, _, rest = name.partition(".")
    if head.lower() in vmods.KNOWN:
        vmod = vmods.load(head.lower())
        if rest in vmod.functions or rest in vmod.objects:
            return
    if not rest and re.search(rf"\bnew\s+{re.escape(name)}\s*=", source, re.IGNORECASE):
        # an object instance: VCC wants one of its methods
        raise VCLError(f"Expected '.' got {_describe(tok, source)}", _tok_pos(tok, filename))
    raise VCLError(f"Symbol not found: '{name}'", pos)


def _unterminated(source: str, filename: str) -> VCLError | None:
    """An unterminated comment or string, which VCC's lexer reports before any syntax error."""
    i, n = 0, len(source)
    while i < n:
        c = source[i]
        two = source[i:i + 2]
        if two == "//" or c == "#":
            end = source.find("\n", i)
            i = n if end < 0 else end
            continue
        for opener, closer, what in (("/*", "*/", "/* ... */ comment"), ('"""', '"""', "long-string"),
                                     ('{"', '"}', "long-string"), ('"', '"', "string")):
            if source.startswith(opener, i):
                end = source.find(closer, i + len(opener))
                if what == "string":
                    newline = source.find("\n", i + 1)
                    if newline >= 0 and (end < 0 or newline < end):
                        end = -1
                if end < 0:
                    line = source.count("\n", 0, i) + 1
                    pos = ast.Pos(filename, line, i - source.rfind("\n", 0, i), len(opener))
                    return VCLError(f"Unterminated {what}, starting at", pos)
                i = end + len(closer)
                break
        else:
            i += 1
    return None


_BAD_TOKEN = "vcl__bad_token__"


def _parse_with_bad_token(source: str, filename: str, start: str, tok: Token) -> ast.Program | None:
    """Parse again with a placeholder expression before (or instead of) the unexpected token, so
    the checker can report it as VCC does: "Unknown token ';' when looking for STRING".
    None when that does not parse either (the plain syntax error stands)."""
    before, after = source[:tok.start_pos], source[tok.start_pos:]
    described = _describe(tok, source)
    bad = ast.BadToken(_tok_pos(tok, filename), described)
    # a two-character token VCC lexes whole (`<<`) goes whole
    rest = after[max(len(tok.value), len(described) - 2):]
    # Before the token, instead of it, or instead of it and joined to what follows (`!!true`); last,
    # instead of all that follows, its open parentheses and blocks closed (`synthetic( << "foo";`).
    plain = re.sub(r'"[^"\n]*"', "", before)
    closing = ")" * max(plain.count("(") - plain.count(")"), 0) + ";" + "}" * max(plain.count("{") - plain.count("}"), 0)
    for fixed in (f"{before}{_BAD_TOKEN} {after}", f"{before}{_BAD_TOKEN} {rest}", f"{before}{_BAD_TOKEN} + {rest}",
                  f"{before}{_BAD_TOKEN}{closing}"):
        try:
            tree = _lark().parse(fixed, start=start)
            return _ToAst(filename, fixed, bad).transform(tree)
        except (UnexpectedInput, _NestedComment, VisitError):
            continue
    return None


def parse(source: str, filename: str, *, cache: bool = False, start: str = "start") -> ast.Program:
    """Parse one VCL file (includes are not followed here); VCLError on a syntax error.

    cache=True keeps the parse tree of `source` (for the built-in VCL, parsed on every load); the
    AST is still built fresh each time because the checker annotates it.
    """
    try:
        tree = _cached_tree(source) if cache else _lark().parse(source, start=start)
    except _NestedComment as exc:
        before = exc.tok.value[:exc.inner]
        line = exc.tok.line + before.count("\n")
        col = len(before) - before.rfind("\n") if "\n" in before else exc.tok.column + exc.inner
        raise VCLError("/* ... */ comment contains /*", _tok_pos(exc.tok, filename),
                       [("here:", ast.Pos(filename, line, col, 2))]) from None
    except UnexpectedInput as exc:
        lexical = _unterminated(source, filename)
        if lexical is not None:
            raise lexical from None
        return _syntax_error(exc, source, filename, start)
    return _to_ast(tree, filename, source)


_RETURN_PAREN = re.compile(r"\breturn\s*\(\s*(\w+)\s*\((?=[^;]*$)")
# what the unexpected token stood where VCC wanted an expression of a known type: (context, type)
_WANTED = ((re.compile(r"\b(?:ban|synthetic)\s*\(\s*$"), "STRING"),)


def _check_return_args(source: str, filename: str, tok: Token) -> None:
    """VCC checks a return action's '(' before its arguments: an action that takes none says so
    first, whatever follows (vcc_act_return)."""
    found = list(_RETURN_PAREN.finditer(source, max(0, tok.start_pos - 512), tok.start_pos))
    m = found[-1] if found else None
    if m is not None and m.group(1) in symbols.ACTIONS and not symbols.ACTION_ARGS.get(m.group(1)):
        at = m.end() - 1
        line = source.count("\n", 0, at) + 1
        col = at - source.rfind("\n", 0, at)
        raise VCLError("Arguments not allowed.", ast.Pos(filename, line, col, 1))


# `vcl N.N` at the end of the text before a parse error (the ';' missing)
_VCL_LINE = re.compile(r"(?:^|[\s;}])(?P<kw>vcl)\s+(?P<num>[0-9]+\.[0-9]+)\s*$")


def check_vcl_version(version: str, kw_pos: ast.Pos, num_pos: ast.Pos) -> None:
    """vcc_ParseVcl's checks of the number: written N.N, and a version VCC knows (4.0 or 4.1)."""
    if not re.fullmatch(r"[0-9]\.[0-9]", version):
        raise VCLError("Don't play silly buggers with VCL version numbers", num_pos)
    if version not in ("4.0", "4.1"):
        raise VCLError(f"VCL version {version} not supported.", kw_pos)


_SCAN = re.compile(r'"""(?:.|\n)*?"""|\{"(?:.|\n)*?"\}|"[^"\n]*"|/\*(?:.|\n)*?\*/|(?://|#)[^\n]*|[(){};,]|[^"(){};,/#]+|.')


def _at_top_level(source: str, end: int) -> bool:
    """No '{' left open before `end` (strings and comments skipped)."""
    depth = 0
    for m in _SCAN.finditer(source, 0, end):
        t = m.group(0)
        depth += (t == "{") - (t == "}")
    return depth <= 0


def _open_parenthesis(source: str, end: int) -> tuple[str, int] | None:
    """The innermost '(' not yet closed before `end`: (the name before it, commas after it at its
    own depth); strings and comments skipped."""
    stack: list[list] = []
    last_word = ""
    for m in _SCAN.finditer(source, 0, end):
        t = m.group(0)
        if t == "(":
            stack.append([last_word, 0])
        elif t == ")":
            if stack:
                stack.pop()
        elif t == "," and stack:
            stack[-1][1] += 1
        if t in ("(", ")", ","):
            last_word = ""
        elif t.strip():
            name = _TRAILING_NAME.search(t)
            last_word = name.group(1) if name else ""
    return (stack[-1][0], stack[-1][1]) if stack else None


_TRAILING_NAME = re.compile(r"([A-Za-z_][\w.-]*)\s*$")
# Built-in functions VCC parses itself: their argument count.
_BUILTIN_ARITY = {"regsub": 3, "regsuball": 3}


def _arity(word: str) -> int:
    """How many arguments VCC reads for a call of `word` with a ',' wanted after each but the last:
    a built-in's count; for a vmod function VCC's vcc_func_args wants a ',' after every argument
    not followed by ')' (too many are reported later); 0 when unknown."""
    if word in _BUILTIN_ARITY:
        return _BUILTIN_ARITY[word]
    return 1 << 30 if _is_function(word) else 0


def _is_function(word: str) -> bool:
    vmod, _, name = word.partition(".")
    return word in _BUILTIN_ARITY or (vmod.lower() in vmods.KNOWN and name in vmods.load(vmod.lower()).functions)


_FIELD_NO_SEMICOLON = re.compile(r'"[^"\n]*"\s*(?P<dot>\.)\s*(?:[A-Za-z_][\w-]*\s*=?|\.)?\s*$')
_DECLARATION = re.compile(r"(?:^|[\s;}])(?:backend|probe)\s+[\w-]+\s*\{")


def _in_declaration(source: str, at: int) -> bool:
    """Is `at` inside a backend or probe declaration's braces?"""
    last = None
    for m in _DECLARATION.finditer(source, 0, at):
        last = m
    if last is None:
        return False
    depth = 0
    for m in _SCAN.finditer(source, last.end() - 1, at):
        t = m.group(0)
        depth += t == "{"
        depth -= t == "}"
    return depth > 0


def _vcc_expectation(expected: set[str], got: str) -> str | None:
    """VCC's words where its recursive descent wants one thing and the LALR parser lists several."""
    if {"KW_SET", "KW_IF", "RBRACE"} <= expected:
        return "Expected an action, 'if', '{' or '}'"        # vcc_Compound, at a statement
    if expected == {"DOT", "RBRACE"}:
        return f"Expected '.' got {got}"                      # a backend's or probe's fields
    if {"LBRACE", "NONE"} <= expected:
        return f"Expected '{{' got {got}"                     # after `backend NAME`
    if {"LPAR", "STRING"} <= expected <= {"LPAR", "STRING", "NEGATE", "RBRACE"}:
        return f"Expected CSTR got {got}"                     # an ACL entry
    return None


def _syntax_error(exc: UnexpectedInput, source: str, filename: str, start: str) -> ast.Program:
    """Raise VCC's message for a parse error (or return the program a recovery made of it)."""
    if isinstance(exc, UnexpectedToken):
        tok = exc.token
        _check_units(source, filename, tok)
        _check_named_symbol(source, filename, tok)
        _check_action_args(source, filename, tok)
        if tok.type == "$END":
            lines = source.split("\n")
            pos = ast.Pos(filename, len(lines), len(lines[-1]) + 1, 1)
        else:
            pos = _tok_pos(tok, filename)
            _check_return_args(source, filename, tok)
        expected = _expected(set(exc.expected))
        open_paren = _open_parenthesis(source, tok.start_pos) if tok.type != "$END" else None
        if "RPAR" in exc.expected and open_paren is not None and source[:tok.start_pos].rstrip()[-1:] not in "(,":
            # an expression in ( ) that goes on where VCC wants its ')', or its ',' between the
            # arguments of regsub()/regsuball()
            word, commas = open_paren
            want = "','" if commas + 1 < _arity(word) else "')'"
            raise VCLError(f"Expected {want} got {_describe(tok, source)}", pos) from None
        if set(exc.expected) == {"LBRACE"} and re.search(r"\belse\s*$", source[:tok.start_pos]):
            raise VCLError("'else' must be followed by 'if' or '{'", pos) from None
        if {"FROM", "SEMICOLON"} <= set(exc.expected):
            raise VCLError("Expected 'from path ...'", pos) from None        # `import NAME` goes on
        if {"FLAGSIGN", "LBRACE"} <= set(exc.expected):
            raise VCLError(f"Expected '{{' got {_describe(tok, source)}", pos) from None   # `acl NAME`
        glued = _FIELD_NO_SEMICOLON.search(source, 0, tok.start_pos + len(tok.value))
        if glued is not None and _in_declaration(source, glued.start()):
            # `.host = "x" .port = ...`: VCC took the string and wanted the ';' where the '.' is
            at = glued.start("dot")
            dot = ast.Pos(filename, source.count("\n", 0, at) + 1, at - source.rfind("\n", 0, at), 1)
            raise VCLError("Expected ';' got '.'", dot) from None
        if {"KW_SUB", "KW_BACKEND", "KW_ACL"} <= set(exc.expected) or (
                tok.type in ("MULOP", "ADDOP") and _at_top_level(source, tok.start_pos)):
            # At the top level, VCC lists the declarations it knows (an operator there is seen by
            # our LALR parser before it leaves the sub it just closed).
            msg = (f"Expected one of\n\t'acl', 'sub', 'backend', 'probe', 'import',  or 'vcl'\n"
                   f"Found: {_describe(tok, source)} at")
        elif "SEMICOLON" in exc.expected and _VCL_LINE.search(source[:tok.start_pos]):
            m = _VCL_LINE.search(source[:tok.start_pos])
            at = m.start("kw")
            kw_pos = ast.Pos(filename, source.count("\n", 0, at) + 1, at - source.rfind("\n", 0, at), 3)
            num_at = m.start("num")
            num_pos = ast.Pos(filename, source.count("\n", 0, num_at) + 1,
                              num_at - source.rfind("\n", 0, num_at), len(m.group("num")))
            check_vcl_version(m.group("num"), kw_pos, num_pos)
            msg, pos = "Expected 'vcl N.N;' found no semi-colon", kw_pos
        elif set(exc.expected) == {"FLOAT"}:
            msg = f"Expected FNUM got {_describe(tok, source)}"    # the `vcl N.N;` number
        elif {"SEMICOLON", "LPAR"} <= set(exc.expected) and re.search(r"\breturn\s*$", source[:tok.start_pos]):
            msg = f"Expected '(' got {_describe(tok, source)}"      # return without parentheses
        elif "SEMICOLON" in exc.expected and _called_without_parenthesis(source, tok):
            msg = f"Expected '(' got {_describe(tok, source)}"      # a function's name alone
        elif "SEMICOLON" in exc.expected:
            # The usual mistake; say it the way VCC does.
            msg = f"Expected ';' got {_describe(tok, source)}"
        elif {"STRING", "INT", "NAME"} <= set(exc.expected):
            msg = f"Expected an expression got {_describe(tok, source)}"
            if tok.type != "$END" and source[:tok.start_pos].rstrip().endswith("~"):
                # VCC names the type it wanted: an ACL after an IP's match operator, else a REGEX
                wanted = "ACL" if _IP_MATCH.search(source, 0, tok.start_pos) else "REGEX"
                msg = f"Unknown token {_describe(tok, source)} when looking for {wanted}"
            elif tok.type != "$END":
                program = _parse_with_bad_token(source, filename, start, tok)
                if program is not None:
                    return program
                before = source[:tok.start_pos]
                for context, vtype in _WANTED:
                    if context.search(before):
                        msg = f"Unknown token {_describe(tok, source)} when looking for {vtype}"
        elif len(set(exc.expected) - {"SLASH"}) == 1:
            # An optional ACL /mask is not what VCC says it wanted.
            msg = f"Expected {_expected(set(exc.expected) - {'SLASH'})} got {_describe(tok, source)}"
            if set(exc.expected) == {"LPAR"}:
                _check_statement_name(source, filename, tok)
        elif tok.type in _DECLARATION_WORDS and {"KW_SET", "KW_IF", "RBRACE"} <= set(exc.expected):
            # a declaration's keyword where a statement goes: VCC reads on to the name and refuses it
            msg, pos = "Symbol cannot be used here.", _next_token_pos(source, filename, tok)
        else:
            msg = _vcc_expectation(set(exc.expected), _describe(tok, source))
            if msg is None:
                msg = f"Syntax error: unexpected {_describe(tok, source)}"
                if expected and len(exc.expected) <= 6:
                    msg += f", expected {expected}"
        raise VCLError(msg, pos) from None
    if isinstance(exc, UnexpectedCharacters):
        char = source[exc.pos_in_stream] if exc.pos_in_stream < len(source) else ""
        ahead = source[exc.pos_in_stream:exc.pos_in_stream + 3]
        msg = "Syntax error at"          # VCC's words for a character no token starts with
        if ahead.startswith("/*"):
            msg = "Unterminated /* ... */ comment, starting at"
        elif ahead == '"""' or ahead.startswith('{"'):
            msg = "Unterminated long-string, starting at"
        elif char == '"':
            msg = "Unterminated string, starting at"
        raise VCLError(msg, ast.Pos(filename, exc.line, exc.column, 1)) from None
    if isinstance(exc, UnexpectedEOF):  # pragma: no cover - the LALR parser reports $END as a token
        raise VCLError("Syntax error: unexpected end of file", ast.Pos(filename, exc.line, exc.column)) from None
    raise VCLError(f"Syntax error: {exc}", ast.Pos(filename, exc.line, exc.column))  # pragma: no cover


_RETURN_ARGS = re.compile(r"\breturn\s*\(\s*([a-z_]+)\s*\(")


_NUMBER_THEN_ID = re.compile(r"(?<![\w.-])\d+(?:\.\d+)?[ \t]*([A-Za-z_][\w-]*)")
_STRING_OR_COMMENT = re.compile(r'"""[\s\S]*?"""|\{"[\s\S]*?"\}|"[^"\n]*"|/\*[\s\S]*?\*/|(?://|#)[^\n]*')
_UNIT_WORDS = frozenset(DURATION_UNITS) | {"b", "k", "kb", "m", "mb", "g", "gb", "t", "tb", "p", "pb"}


_SET_TARGET = re.compile(r"\b(?i:set|unset)\s+([A-Za-z_][\w.-]*)\s*$")
_SUB_NAME = re.compile(r"(?:^|[\s;}])sub\s+([A-Za-z_][\w.-]*)\s*$")


def _check_named_symbol(source: str, filename: str, tok: Token) -> None:
    """The word after `sub` or after `set`/`unset`: VCC looks it up before reading further, and names
    what it found ("Symbol 'set' has wrong type (action), expected var:"), before the syntax error
    our parser stopped at later."""
    if tok.type == "$END":
        return
    for pattern, wanted in ((_SUB_NAME, "sub"), (_SET_TARGET, "var")):
        m = pattern.search(source, 0, tok.start_pos)
        if m is None:
            continue
        name = m.group(1)
        kind = _symbol_kind(source, name)
        if kind is not None and kind != wanted:
            at = m.start(1)
            pos = ast.Pos(filename, source.count("\n", 0, at) + 1, at - source.rfind("\n", 0, at), len(name))
            raise VCLError(f"Symbol '{name}' has wrong type ({kind}), expected {wanted}:", pos)


def _symbol_kind(source: str, name: str) -> str | None:
    """What VCC knows `name` as: a built-in symbol's kind, or what this source imports or declares."""
    key = name.lower()
    word = re.escape(name)
    kind = symbols.BUILTIN_SYMBOLS.get(key) or ("func" if key in symbols.VCC_FUNCS else None)
    if kind is None and re.search(rf"\bimport\s+{word}\b", source):
        kind = "vmod"
    if kind is None:
        declared = re.search(rf"(?:^|[\s;}}])(acl|sub|backend|probe)\s+{word}(?![\w.-])", source)
        kind = declared.group(1) if declared else None
    if kind is None and re.search(rf"\bnew\s+{word}\s*=", source):
        kind = "instance"
    return kind


# an IP variable and the match operator (client.ip ~ ...): VCC wants an ACL after it
_IP_MATCH = re.compile(r"\b(?:client|server|remote|local|beresp\.backend|bereq\.backend)\.ip\s*!?~\s*$")
_DECLARATION_WORDS = frozenset({"KW_SUB", "KW_BACKEND", "KW_ACL", "KW_PROBE", "KW_IMPORT", "KW_VCL"})


def _next_token_pos(source: str, filename: str, tok: Token) -> ast.Pos:
    """Where the token after `tok` stands (VCC's lexer: blanks and comments skipped)."""
    at = BLANKS.match(source, tok.end_pos).end()
    m = NEXT_TOKEN.match(source, at)
    return ast.Pos(filename, source.count("\n", 0, at) + 1, at - source.rfind("\n", 0, at),
                   len(m.group(0)) if m else 1)


def _called_without_parenthesis(source: str, tok: Token) -> bool:
    """The token stands right after a function's name: VCC wants the call's '('."""
    if tok.type == "$END":
        return False
    name = _TRAILING_NAME.search(source, 0, tok.start_pos)
    return name is not None and _is_function(name.group(1))


def _check_units(source: str, filename: str, tok: Token) -> None:
    """A number followed by a word that is no unit, before a syntax error: VCC reads the word as the
    number's duration unit and stops there ("Unknown duration unit 'mif'"), before it gets to the
    token our parser stopped at."""
    end = tok.start_pos if tok.type != "$END" else len(source)
    text = _STRING_OR_COMMENT.sub(lambda m: re.sub(r"[^\n]", " ", m.group()), source[:end])
    body = text.find("sub ")
    for m in _NUMBER_THEN_ID.finditer(text, max(body, 0)):
        unit = m.group(1)
        if body < 0 or unit in _UNIT_WORDS or unit.lower() in _UNIT_WORDS:
            continue
        at = m.start(1)
        pos = ast.Pos(filename, source.count("\n", 0, at) + 1, at - source.rfind("\n", 0, at), len(unit))
        raise VCLError(f"Unknown duration unit '{unit}'\nLegal duration units are 'ms', 's', 'm', 'h', "
                       "'d', 'w' and 'y'", pos)


def _check_action_args(source: str, filename: str, tok: Token) -> None:
    """A syntax error after `return (ACTION(` where ACTION takes no arguments: VCC stops at that
    '(' already ("Arguments not allowed.")."""
    end = tok.start_pos if tok.type != "$END" else len(source)
    start = source.rfind("return", 0, end)
    if start < 0:
        return
    m = _RETURN_ARGS.match(source, start)
    if m is None or m.end() > end or m.group(1) not in symbols.ACTIONS or symbols.ACTION_ARGS.get(m.group(1)):
        return
    paren = m.end() - 1
    line = source.count("\n", 0, paren) + 1
    col = paren - (source.rfind("\n", 0, paren) + 1) + 1
    raise VCLError("Arguments not allowed.", ast.Pos(filename, line, col, 1))


def _to_ast(tree: Tree, filename: str, source: str) -> ast.Program:
    try:
        return _ToAst(filename, source).transform(tree)
    except VisitError as exc:
        if isinstance(exc.orig_exc, VCLError):
            raise exc.orig_exc from None
        raise


def parse_with_includes(source: str, filename: str, include_dirs: tuple[str, ...] | list[str],
                        sources: dict[str, str], depth: int = 0) -> list[object]:
    """Parse `source` and splice in every `include "file";` (searched beside the including file,
    then in include_dirs), at top level or inside a subroutine. `sources` collects every file's
    text for error reports."""
    sources[filename] = source
    program = parse(source, filename)
    items: list[object] = []
    for item in program.items:
        if isinstance(item, ast.Include):
            text, path = _read_include(item.path, item.pos, filename, include_dirs, depth)
            items.extend(parse_with_includes(text, path, include_dirs, sources, depth + 1))
            continue
        if isinstance(item, ast.Sub):
            item.body = _expand(item.body, filename, include_dirs, sources, depth)
        items.append(item)
    return items


def _expand(body: list[ast.Stmt], filename: str, include_dirs, sources: dict[str, str],
            depth: int) -> list[ast.Stmt]:
    """Replace include statements in a body (and nested bodies) by the included statements."""
    out = ast.Body(ref=getattr(body, "ref", None), end=getattr(body, "end", None))
    for stmt in body:
        if isinstance(stmt, ast.IncludeStmt):
            text, path = _read_include(stmt.path, stmt.pos, filename, include_dirs, depth)
            sources[path] = text
            included = parse(text, path, start="stmts").items
            expanded = _expand(included, path, include_dirs, sources, depth + 1)
            if stmt is body[0] and expanded:
                out.ref = expanded[0].pos       # the block's first token is now the included one
            out.extend(expanded)
            continue
        if isinstance(stmt, ast.If):
            stmt.branches = [(c, _expand(b, filename, include_dirs, sources, depth)) for c, b in stmt.branches]
            if stmt.else_body is not None:
                stmt.else_body = _expand(stmt.else_body, filename, include_dirs, sources, depth)
        elif isinstance(stmt, ast.Block):
            stmt.body = _expand(stmt.body, filename, include_dirs, sources, depth)
        out.append(stmt)
    return out


def _read_include(name: str, pos: ast.Pos, current: str, include_dirs, depth: int) -> tuple[str, str]:
    if depth > 10:
        raise VCLError(f'Recursive include of "{name}"', pos)
    path = _find_include(name, current, include_dirs)
    if path is None:
        raise VCLError(f"Cannot read file '{name}'", pos)
    try:
        return Path(path).read_text(), path
    except OSError as exc:
        raise VCLError(f"Cannot read file '{name}' ({exc.strerror})", pos) from None


def _find_include(name: str, current: str, include_dirs) -> str | None:
    if os.path.isabs(name):
        return name if os.path.exists(name) else None
    candidates = [os.path.join(os.path.dirname(current) or ".", name)]
    candidates += [os.path.join(d, name) for d in include_dirs]
    for cand in candidates:
        if os.path.exists(cand):
            return cand
    return None

