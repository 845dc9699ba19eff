"""VCL regular expressions: PCRE syntax translated to Python `re`, compiled once at load, and
regsub()/regsuball() with VCL's substitution syntax (\\0 or \\& for the match, \\1..\\9 for groups)."""

from __future__ import annotations

import re
from functools import lru_cache

_POSIX_CLASSES = {
    "alnum": "a-zA-Z0-9", "alpha": "a-zA-Z", "ascii": "\\x00-\\x7f", "blank": " \\t",
    "cntrl": "\\x00-\\x1f\\x7f", "digit": "0-9", "graph": "\\x21-\\x7e", "lower": "a-z",
    "print": "\\x20-\\x7e", "punct": "!-/:-@\\[-`{-~", "space": " \\t\\n\\r\\f\\v", "upper": "A-Z",
    "word": "\\w", "xdigit": "0-9A-Fa-f",
}
_GLOBAL_FLAGS = re.compile(r"\(\?([imsx]*(?:-[imsx]+)?)\)")
# Unicode properties Python's re can express.
_UNICODE_PROPS = {"L": "[^\\W\\d_]", "N": "\\d", "Nd": "\\d"}
_UNICODE_NOT_PROPS = {"L": "[\\W\\d_]", "N": "\\D", "Nd": "\\D"}


def pcre_to_python(pattern: str) -> str:
    """Translate the PCRE syntax VCL users write into Python `re` syntax.

    Handles inline flags in the middle of a pattern ("^(?i)foo" -> "^(?i:foo)"), POSIX classes
    ([[:upper:]]), \\z / \\Z / \\A, \\h, \\Q...\\E and (?<name>...) groups.
    """
    out: list[str] = []
    i, n = 0, len(pattern)
    # Scoped flag groups opened at each nesting level (their flags), closed at the level's end.
    owed: list[list[str]] = [[]]
    in_class = False
    while i < n:
        c = pattern[i]
        if c == "\\" and i + 1 < n:
            nxt = pattern[i + 1]
            if nxt == "Q":
                end = pattern.find("\\E", i + 2)
                lit = pattern[i + 2: end if end >= 0 else n]
                out.append(re.escape(lit))
                i = (end + 2) if end >= 0 else n
                continue
            if nxt == "z":
                out.append("\\Z")
            elif nxt == "Z":
                out.append("(?=\\n?\\Z)")
            elif nxt in "pP" and not in_class:
                m = re.match(r"\{\^?(\w+)\}|(\w)", pattern[i + 2:])
                name = (m.group(1) or m.group(2)) if m else ""
                table = _UNICODE_PROPS if nxt == "p" else _UNICODE_NOT_PROPS
                if name not in table:
                    raise re.error(f"unsupported Unicode property \\{nxt}{{{name}}}")
                out.append(table[name])
                i += 2 + m.end()
                continue
            elif nxt == "h":
                out.append("[ \\t]" if not in_class else " \\t")
            elif nxt == "k" and i + 2 < n and pattern[i + 2] in "<{'":
                close = {"<": ">", "{": "}", "'": "'"}[pattern[i + 2]]
                end = pattern.find(close, i + 3)
                out.append("(?P=%s)" % pattern[i + 3:end])
                i = end + 1
                continue
            else:
                out.append(c + nxt)
            i += 2
            continue
        if in_class:
            if c == "[" and pattern.startswith("[:", i):
                end = pattern.find(":]", i + 2)
                if end > 0:
                    name = pattern[i + 2:end]
                    neg = name.startswith("^")
                    cls = _POSIX_CLASSES.get(name.lstrip("^"))
                    if cls is None:
                        raise re.error("unknown POSIX class name")
                    if not neg:
                        out.append(cls)
                        i = end + 2
                        continue
            if c == "]":
                in_class = False
            out.append(c)
            i += 1
            continue
        if c == "[":
            in_class = True
            out.append(c)
            i += 1
            if i < n and pattern[i] == "^":
                out.append("^")
                i += 1
            if i < n and pattern[i] == "]":
                out.append("\\]")
                i += 1
            continue
        if c == "(":
            m = _GLOBAL_FLAGS.match(pattern, i)
            if m and m.group(1) and (i > 0 or len(owed) > 1 or "-" in m.group(1)):
                # Python only allows global flags at the very start: scope them to the rest of
                # the enclosing group instead, which is what PCRE means.
                out.append("(?%s:" % m.group(1))
                owed[-1].append(m.group(1))
                i = m.end()
                continue
            if pattern.startswith("(?<", i) and i + 3 < n and pattern[i + 3] not in "=!":
                out.append("(?P<")
                i += 3
                owed.append([])
                continue
            owed.append([])
            out.append(c)
            i += 1
            continue
        if c == ")":
            if len(owed) > 1:
                out.append(")" * len(owed.pop()))
            out.append(")")
            i += 1
            continue
        if c == "|" and owed[-1]:
            # PCRE carries a flag change into the following alternatives of the same group.
            out.append(")" * len(owed[-1]) + "|" + "".join("(?%s:" % f for f in owed[-1]))
            i += 1
            continue
        out.append(c)
        i += 1
    out.append(")" * len(owed[0]))
    return "".join(out)


class Regex:
    """A VCL regex compiled once at load."""

    __slots__ = ("source", "compiled", "search")

    def __init__(self, source: str) -> None:
        self.source = source
        self.compiled = re.compile(pcre_to_python(source))
        self.search = self.compiled.search

    def match(self, subject: str | None) -> bool:
        return self.search(subject if subject is not None else "") is not None

    def __repr__(self) -> str:
        return f"Regex({self.source!r})"


# Python's re messages and what PCRE2 (varnishd's regex library) says for the same mistake.
_PCRE_MESSAGES = [
    (re.compile(r"missing \), unterminated subpattern"), "missing closing parenthesis"),
    (re.compile(r"unterminated character set"), "missing terminating ] for character class"),
    (re.compile(r"min repeat greater than max repeat"), "numbers out of order in {} quantifier"),
    (re.compile(r"nothing to repeat|multiple repeat"), "quantifier does not follow a repeatable item"),
    (re.compile(r"missing >, unterminated name|missing group name"),
     "syntax error in subpattern name (missing terminator?)"),
    (re.compile(r"bad character in group name '\d"), "subpattern name must start with a non-digit"),
    (re.compile(r"bad character in group name"), "syntax error in subpattern name (missing terminator?)"),
    (re.compile(r"unbalanced parenthesis"), "unmatched closing parenthesis"),
    (re.compile(r"bad character range"), "range out of order in character class"),
    (re.compile(r"unknown extension"), "unrecognized character after (? or (?-"),
    (re.compile(r"look-behind requires fixed-width pattern"), "lookbehind assertion is not fixed length"),
    (re.compile(r"bad escape \(end of pattern\)"), "\\ at end of pattern"),
    (re.compile(r"invalid group reference|unknown group name"), "reference to non-existent subpattern"),
    (re.compile(r"redefinition of group name"),
     "two named subpatterns have the same name (PCRE2_DUPNAMES not set)"),
]
# PCRE2's largest {n,m} count.
_TOO_BIG_REPEAT = re.compile(r"(?<!\\)\{(?:\d*,)?(\d{6,}|6553[6-9]|655[4-9]\d|65[6-9]\d\d|6[6-9]\d{3}|[7-9]\d{4})\}")


def pcre_message(exc: re.error) -> str:
    """The message PCRE2 gives for what Python's re refused (Python's own when no mapping)."""
    for pattern, text in _PCRE_MESSAGES:
        if pattern.match(exc.msg):
            return text
    return exc.msg


def check_regex(source: str) -> str | None:
    """None if `source` compiles, else PCRE2's reason (for a compile-time error)."""
    if _TOO_BIG_REPEAT.search(source):
        return "number too big in {} quantifier"
    try:
        re.compile(pcre_to_python(source))
    except re.error as exc:
        return pcre_message(exc)
    return None


# As VRT_regsub: a backslash before a digit is a group reference; before anything else it escapes
# that character (so \& is a literal "&"); a backslash at the very end stays.
_SUB_TOKEN = re.compile(r"\\(.)", re.S)


@lru_cache(maxsize=256)
def _sub_template(sub: str):
    """Split a VCL substitution string into literal parts and group numbers."""
    parts: list[str | int] = []
    pos = 0
    for m in _SUB_TOKEN.finditer(sub):
        if m.start() > pos:
            parts.append(sub[pos:m.start()])
        g = m.group(1)
        parts.append(int(g) if g in "0123456789" else g)
        pos = m.end()
    if pos < len(sub):
        parts.append(sub[pos:])
    if all(isinstance(p, str) for p in parts):
        return "".join(parts)  # type: ignore[arg-type]
    return tuple(parts)


@lru_cache(maxsize=512)
def _python_template(sub: str, groups: int) -> str:
    """A VCL substitution as a Python `re` replacement string (expanded by re in C): literal text
    with backslashes escaped, \\N as \\g<N>, and references to groups the regex lacks as ""."""
    parts = _sub_template(sub)
    if isinstance(parts, str):
        return parts.replace("\\", "\\\\")
    out = []
    for p in parts:
        if isinstance(p, str):
            out.append(p.replace("\\", "\\\\"))
        elif p <= groups:
            out.append(f"\\g<{p}>")
    return "".join(out)


def regsub(regex: Regex, subject: str | None, sub: str | None, all_: bool) -> str:
    """regsub()/regsuball(): \\0 is the match, \\1..\\9 the groups (unmatched groups: "")."""
    compiled = regex.compiled
    template = _python_template(sub if sub is not None else "", compiled.groups)
    subject = subject if subject is not None else ""
    if not all_:
        return compiled.sub(template, subject, count=1)
    # VRT_regsub looks for every match after the first with PCRE's NOTEMPTY: later empty matches
    # are left alone ("abc" ~ "" gives "-abc", not "-a-b-c-").
    first = True

    def replace(m: re.Match) -> str:
        nonlocal first
        if m.start() == m.end() and not first:
            return ""
        first = False
        return m.expand(template)

    return compiled.sub(replace, subject)
