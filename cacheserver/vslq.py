"""Reading the shared log: transactions, grouping (-g), the VSL query language (-q), varnishlog's layout.

All of this runs in the reader's process (cachelog, cachencsa, vtest's logexpect), never in the server.
"""

from __future__ import annotations

import re
from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

from cacheserver.vsl import TAGS, Overrun, Record

TYPE_LABEL = {"sess": "Session", "req": "Request", "bereq": "BeReq", "raw": "Record"}
GROUPINGS = ("raw", "vxid", "request", "session")
MAX_PENDING = 10000          # incomplete transactions held at most (varnishlog's -L)


@dataclass
class Txn:
    vxid: int
    kind: str = "-"
    type: str = "unknown"
    parent: int = 0
    reason: str = ""
    records: list[Record] = field(default_factory=list)
    children: list[int] = field(default_factory=list)
    complete: bool = False
    level: int = 1


class QueryError(ValueError):
    """A malformed -q: str() is varnishlog's report, with the position marked."""

    def __init__(self, query: str, pos: int, length: int, message: str) -> None:
        self.query = query
        self.pos = pos
        marker = "".join("#" if pos <= i < pos + max(length, 1) else "-" for i in range(len(query)))
        super().__init__(f"Query expression error:\n{message} (Pos {pos + 1})\n{query}\n{marker}\n")


# -- the query language (vsl-query(7)) ---------------------------------------------------------------

# a bare word is vxp_lexer's isword run (letters, digits, _-+.*); ',' and '#' stay in it here, as tag
# lists and their globs are split later; anything else unquoted is a syntax error, as varnishd's
_TOKEN = re.compile(r"""\s*(?:(?P<str>"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*')|(?P<op>==|!=|<=|>=|!~|[<>~(){}\[\]:])|(?P<word>[A-Za-z0-9_\-+.*,#]+))""")
_OPS = {"==", "!=", "<", "<=", ">", ">=", "eq", "ne", "~", "!~"}


class _Lexer:
    def __init__(self, query: str) -> None:
        self.query = query
        self.tokens: list[tuple[str, str, int]] = []
        pos = 0
        while pos < len(query):
            m = _TOKEN.match(query, pos)
            if m is None or m.end() == pos:
                if query[pos:].strip() == "":
                    break
                bad = pos + len(query[pos:]) - len(query[pos:].lstrip())
                raise QueryError(query, bad, 1, "Syntax error")
            kind = m.lastgroup
            start = m.start(kind)
            self.tokens.append((kind, m.group(kind), start))
            pos = m.end()
        self.i = 0

    def peek(self) -> tuple[str, str, int]:
        if self.i < len(self.tokens):
            return self.tokens[self.i]
        return ("eoi", "", len(self.query))

    def next(self) -> tuple[str, str, int]:
        tok = self.peek()
        self.i += 1
        return tok

    def error(self, tok: tuple[str, str, int], what: str) -> QueryError:
        return QueryError(self.query, tok[2], len(tok[1]), f"Expected {what} got '{tok[1]}'")


@dataclass
class _Cond:
    tags: frozenset[str] | None          # None: vxid
    prefix: str | None
    field_no: int | None
    level: int | None
    level_dir: str                       # "", "+", "-"
    op: str | None
    value: object
    regex: re.Pattern | None


def _tags_for(lex: _Lexer, tok: tuple[str, str, int]) -> frozenset[str]:
    names: set[str] = set()
    for part in tok[1].split(","):
        if part.endswith("*"):
            found = {t for t in TAGS if t.lower().startswith(part[:-1].lower())}
        else:
            found = {t for t in TAGS if t.lower() == part.lower()}
        if not found:
            raise QueryError(lex.query, tok[2], len(tok[1]), "Tag name matches zero tags")
        names |= found
    return frozenset(names)


class Query:
    """A compiled -q expression; `matches(group)` is true when some record of the group satisfies it."""

    def __init__(self, text: str, caseless: bool = False) -> None:
        self.text = text
        self.flags = re.IGNORECASE if caseless else 0
        lex = _Lexer(text)
        if lex.peek()[0] == "eoi":
            raise lex.error(lex.peek(), "VSL tag name")
        self.tree = self._or(lex)
        tok = lex.peek()
        if tok[0] != "eoi":
            raise QueryError(text, tok[2], len(tok[1]), f"Expected end of query got '{tok[1]}'")

    def _or(self, lex: _Lexer):
        node = self._and(lex)
        while lex.peek()[1] == "or":
            lex.next()
            node = ("or", node, self._and(lex))
        return node

    def _and(self, lex: _Lexer):
        node = self._not(lex)
        while lex.peek()[1] == "and":
            lex.next()
            node = ("and", node, self._not(lex))
        return node

    def _not(self, lex: _Lexer):
        tok = lex.peek()
        if tok[1] == "not":
            lex.next()
            return ("not", self._not(lex))
        if tok[1] == "(":
            lex.next()
            node = self._or(lex)
            close = lex.next()
            if close[1] != ")":
                raise lex.error(close, "')'")
            return node
        return ("cond", self._cond(lex))

    def _cond(self, lex: _Lexer) -> _Cond:
        level, level_dir = None, ""
        tok = lex.next()
        if tok[1] == "{":
            num = lex.next()
            m = re.fullmatch(r"(\d+)([+-]?)", num[1])
            if num[0] != "word" or m is None:
                raise lex.error(num, "integer")
            level, level_dir = int(m.group(1)), m.group(2)
            close = lex.next()
            if close[1] in ("+", "-"):
                level_dir = close[1]
                close = lex.next()
            if close[1] != "}":
                raise lex.error(close, "'}'")
            tok = lex.next()
        if tok[0] != "word" or tok[1] in ("and", "or", "not"):
            raise lex.error(tok, "VSL tag name")
        tags = None if tok[1] == "vxid" else _tags_for(lex, tok)
        prefix = None
        if lex.peek()[1] == ":":
            lex.next()
            name = lex.next()
            if name[0] != "word":
                raise lex.error(name, "header name")
            prefix = name[1]
        field_no = None
        if lex.peek()[1] == "[":
            lex.next()
            num = lex.next()
            if num[0] != "word" or not num[1].isdigit() or int(num[1]) < 1:
                raise lex.error(num, "positive integer")
            field_no = int(num[1])
            close = lex.next()
            if close[1] != "]":
                raise lex.error(close, "']'")
        op = None
        value: object = None
        regex = None
        nxt = lex.peek()
        if nxt[1] in _OPS:
            op = lex.next()[1]
            val = lex.next()
            if val[0] == "eoi" or val[1] in ("and", "or", ")"):
                what = "regular expression" if op in ("~", "!~") else "string" if op in ("eq", "ne") \
                    else "number"
                raise lex.error(val, what)
            raw = val[1]
            if val[0] == "str":
                raw = raw[1:-1]
            if op in ("~", "!~"):
                try:
                    regex = re.compile(raw, self.flags)
                except re.error as exc:
                    raise QueryError(lex.query, val[2], len(val[1]), f"Regex error ({exc.msg})") from None
            elif op in ("eq", "ne"):
                value = raw
            else:
                try:
                    value = float(raw) if any(c in raw for c in ".eE") else int(raw)
                except ValueError:
                    raise lex.error(val, "number") from None
        elif tags is None:
            raise lex.error(nxt, "operator")
        return _Cond(tags, prefix, field_no, level, level_dir, op, value, regex)

    # -- evaluation ---------------------------------------------------------------------------------

    def matches(self, group: list[Txn]) -> bool:
        return self._eval(self.tree, group)

    def _eval(self, node, group: list[Txn]) -> bool:
        kind = node[0]
        if kind == "or":
            return self._eval(node[1], group) or self._eval(node[2], group)
        if kind == "and":
            return self._eval(node[1], group) and self._eval(node[2], group)
        if kind == "not":
            return not self._eval(node[1], group)
        cond: _Cond = node[1]
        for txn in group:
            if cond.level is not None:
                if cond.level_dir == "+" and txn.level < cond.level:
                    continue
                if cond.level_dir == "-" and txn.level > cond.level:
                    continue
                if cond.level_dir == "" and txn.level != cond.level:
                    continue
            if cond.tags is None:
                if self._compare(cond, str(txn.vxid)):
                    return True
                continue
            for rec in txn.records:
                if rec.tag not in cond.tags:
                    continue
                text = rec.text
                if cond.prefix is not None:
                    name, sep, rest = text.partition(":")
                    if not sep or name.strip().lower() != cond.prefix.lower():
                        continue
                    text = rest.strip()
                if cond.field_no is not None:
                    parts = text.split()
                    if len(parts) < cond.field_no:
                        continue
                    text = parts[cond.field_no - 1]
                if self._compare(cond, text):
                    return True
        return False

    def _compare(self, cond: _Cond, text: str) -> bool:
        op = cond.op
        if op is None:
            return True
        if op == "~":
            return cond.regex.search(text) is not None
        if op == "!~":
            return cond.regex.search(text) is None
        if op == "eq":
            return text == cond.value
        if op == "ne":
            return text != cond.value
        try:
            num = float(text) if isinstance(cond.value, float) else int(text)
        except ValueError:
            try:
                num = float(text)
            except ValueError:
                return False
        value = cond.value
        return {"==": num == value, "!=": num != value, "<": num < value, "<=": num <= value,
                ">": num > value, ">=": num >= value}[op]


# -- grouping -----------------------------------------------------------------------------------------

class Grouper:
    """Turns records into groups of transactions as varnishlog's -g does.

    feed() returns the groups completed by a record; flush() the incomplete ones (at the end of -d).
    In raw mode every record is its own group.
    """

    def __init__(self, grouping: str = "vxid") -> None:
        if grouping not in GROUPINGS:
            raise ValueError(f"unknown grouping {grouping!r}")
        self.grouping = grouping
        self.txns: dict[int, Txn] = {}
        self.lost = 0
        self.done: set[int] = set()          # vxids already shown (bounded, oldest forgotten)
        self.done_order: deque[int] = deque()

    def feed(self, item: Record | Overrun) -> list[list[Txn]]:
        if isinstance(item, Overrun):
            self.lost += item.lost
            return []
        if self.grouping == "raw":
            return [[Txn(item.vxid, item.kind, "raw", records=[item], complete=True)]]
        if item.vxid == 0:
            # CLI, vcl_init's logs, Backend_health: no transaction, shown by -g raw only (as varnishlog)
            return []
        txns = self.txns
        txn = txns.get(item.vxid)
        if txn is None:
            if len(txns) >= MAX_PENDING:
                # too many incomplete transactions: give up the oldest, as varnishlog's -L
                txns.pop(next(iter(txns)))
            txn = txns[item.vxid] = Txn(item.vxid, item.kind)
        txn.records.append(item)
        tag = item.tag
        if tag == "Begin":
            parts = item.text.split()
            if parts:
                txn.type = parts[0]
            if len(parts) > 1 and parts[1].isdigit():
                txn.parent = int(parts[1])
            if len(parts) > 2:
                txn.reason = parts[2]
        elif tag == "Link":
            parts = item.text.split()
            if len(parts) > 1 and parts[1].isdigit():
                child = int(parts[1])
                if child not in txn.children:
                    txn.children.append(child)
        elif tag == "End":
            txn.complete = True
            return self._ready(txn)
        return []

    def _is_root(self, txn: Txn) -> bool:
        if self.grouping == "vxid" or txn.type == "sess" or txn.parent == 0:
            return True
        if self.grouping == "request" and txn.type == "req" and txn.reason == "rxreq":
            return True
        # a parent already shown (a background fetch outliving its request) will not come again
        return txn.parent in self.done

    def _root(self, txn: Txn) -> Txn | None:
        """The top of txn's group, or None while a parent has not shown up yet."""
        seen = set()
        while not self._is_root(txn) and txn.vxid not in seen:
            seen.add(txn.vxid)
            parent = self.txns.get(txn.parent)
            if parent is None:
                return None
            txn = parent
        return txn

    def _ready(self, txn: Txn) -> list[list[Txn]]:
        root = self._root(txn)
        if root is None:
            return []
        group = self._collect(root, 1, [])
        if group is None:
            return []
        for t in group:
            self.txns.pop(t.vxid, None)
            self.done.add(t.vxid)
            self.done_order.append(t.vxid)
        while len(self.done_order) > MAX_PENDING:
            self.done.discard(self.done_order.popleft())
        if self.grouping == "request" and root.type == "sess":
            return []                # request grouping leaves sessions out
        return [group]

    def _collect(self, txn: Txn, level: int, out: list[Txn], partial: bool = False) -> list[Txn] | None:
        """txn and its descendants, breadth first as varnishd's VSLQ lists a group (the root, then
        its children, then theirs); None while one of them is incomplete or not arrived yet."""
        if not txn.complete and not partial:
            return None
        txn.level = level
        out.append(txn)
        if self.grouping == "vxid":
            return out
        i = len(out) - 1
        seen = {txn.vxid}            # (a Link loop must not make the walk endless)
        while i < len(out):
            parent = out[i]
            i += 1
            for vxid in parent.children:
                if vxid in seen:
                    continue
                seen.add(vxid)
                child = self.txns.get(vxid)
                if child is None:
                    if partial or vxid in self.done:     # shown already (its own group)
                        continue
                    return None          # linked but not arrived yet
                if self.grouping == "request" and child.type == "req" and child.reason == "rxreq":
                    continue
                if not child.complete and not partial:
                    return None
                child.level = parent.level + 1
                out.append(child)
        return out

    def flush(self) -> list[list[Txn]]:
        """Whatever is still pending, as groups (varnishlog flushes incomplete transactions at exit)."""
        groups = []
        while self.txns:
            txn = next(iter(self.txns.values()))
            seen = set()
            # from its highest ancestor still here (an orphan's parent may never come)
            while txn.parent in self.txns and txn.vxid not in seen and not self._is_root(txn):
                seen.add(txn.vxid)
                txn = self.txns[txn.parent]
            group = self._collect(txn, 1, [], partial=True)
            for t in group:
                self.txns.pop(t.vxid, None)
            if not (self.grouping == "request" and txn.type == "sess"):
                groups.append(group)
        return groups


# -- layout -------------------------------------------------------------------------------------------

class TagFilter:
    """-i/-I/-x/-X: which records of a shown transaction are printed."""

    def __init__(self) -> None:
        self.include: set[str] | None = None
        self.exclude: set[str] = set()
        self.include_re: list[tuple[frozenset[str] | None, re.Pattern]] = []
        self.exclude_re: list[tuple[frozenset[str] | None, re.Pattern]] = []

    @staticmethod
    def tags(spec: str) -> set[str]:
        out: set[str] = set()
        for part in spec.split(","):
            part = part.strip()
            if part.endswith("*"):
                found = {t for t in TAGS if t.lower().startswith(part[:-1].lower())}
            else:
                found = {t for t in TAGS if t.lower() == part.lower()}
            if not found:
                raise ValueError(f'Unknown tag "{part}"' if not part.endswith("*") else f'No tag matches "{part}"')
            out |= found
        return out

    def add(self, flag: str, spec: str) -> None:
        if flag == "-i":
            self.include = (self.include or set()) | self.tags(spec)
        elif flag == "-x":
            self.exclude |= self.tags(spec)
        else:
            taglist, sep, regex = spec.partition(":")
            tags = frozenset(self.tags(taglist)) if sep and taglist else None
            if not sep:
                regex = spec
            pat = re.compile(regex)
            (self.include_re if flag == "-I" else self.exclude_re).append((tags, pat))

    def shows(self, rec: Record) -> bool:
        tag = rec.tag
        if tag in self.exclude:
            return False
        if self.include is not None and tag not in self.include and not self.include_re:
            return False
        for tags, pat in self.exclude_re:
            if (tags is None or tag in tags) and pat.search(rec.text):
                return False
        if self.include_re:
            hit = any((tags is None or tag in tags) and pat.search(rec.text) for tags, pat in self.include_re)
            if self.include is not None:
                return hit or tag in self.include
            return hit or not any(tags is None or tag in tags for tags, _ in self.include_re)
        return True


def format_raw(rec: Record) -> str:
    return "%10u %-14s %s %s" % (rec.vxid, rec.tag, rec.kind, rec.text)


def format_group(group: list[Txn], grouping: str, show=None) -> Iterator[str]:
    """varnishlog's layout of one group of transactions (ends with an empty line)."""
    if grouping == "raw":
        for txn in group:
            for rec in txn.records:
                if show is None or show(rec):
                    yield format_raw(rec)
        return
    for txn in group:
        level = txn.level
        label = TYPE_LABEL.get(txn.type, "Record")
        yield "%-4s<< %-8s >> %-10u" % ("*" * level, label, txn.vxid)
        for rec in txn.records:
            if show is None or show(rec):
                yield "%-4s%-14s %s" % ("-" * level, rec.tag, rec.text)
    yield ""


def groups_of(items: Iterable[Record | Overrun], grouping: str, query: Query | None = None,
              flush: bool = True) -> Iterator[list[Txn]]:
    """Every group of transactions in `items` that `query` selects."""
    grouper = Grouper(grouping)
    for item in items:
        for group in grouper.feed(item):
            if query is None or query.matches(group):
                yield group
    if flush:
        for group in grouper.flush():
            if query is None or query.matches(group):
                yield group
