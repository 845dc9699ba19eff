"""The parser (tokens, literals, statements, positions) and the PCRE -> Python regex translation."""

from __future__ import annotations

import re

import pytest

from vcl import ast
from vcl.parser import parse
from vcl.regex import Regex, pcre_to_python, regsub


def stmts(body: str) -> list[ast.Stmt]:
    prog = parse("sub vcl_recv {\n" + body + "\n}\n", "s.vcl")
    return prog.items[0].body


def expr(text: str) -> ast.Expr:
    return stmts(f"set req.http.x = {text};")[0].value


# ------------------------------------------------------------------ literals and tokens

@pytest.mark.parametrize("text, cls, value", [
    ('"plain"', ast.StringLit, "plain"),
    ('{"long "with" quotes"}', ast.StringLit, 'long "with" quotes'),
    ('"""triple"""', ast.StringLit, "triple"),
    ('{"multi\nline"}', ast.StringLit, "multi\nline"),
    ('"back\\slash"', ast.StringLit, "back\\slash"),     # VCL strings have no escapes
    ("42", ast.IntLit, 42),
    ("4.25", ast.RealLit, 4.25),
    ("true", ast.Name, "true"),
    ("req.http.X-Forwarded-For", ast.Name, "req.http.X-Forwarded-For"),
])
def test_literals(text, cls, value):
    e = expr(text)
    assert isinstance(e, cls)
    assert (e.name if isinstance(e, ast.Name) else e.value) == value


@pytest.mark.parametrize("text, seconds", [("10ms", 0.01), ("1s", 1), ("1.5m", 90), ("2h", 7200), ("1d", 86400),
                                           ("1w", 604800), ("1y", 31536000)])
def test_duration_units(text, seconds):
    e = expr(text)
    assert isinstance(e, ast.DurationLit) and e.seconds == pytest.approx(seconds)


@pytest.mark.parametrize("text, value", [("1B", 1), ("1KB", 1024), ("2MB", 2 * 1024 ** 2), ("1GB", 1024 ** 3),
                                         ("1TB", 1024 ** 4), ("1.5KB", 1536)])
def test_bytes_units(text, value):
    e = expr(text)
    assert isinstance(e, ast.BytesLit) and e.value == value


def test_comments_of_all_kinds():
    prog = parse("# hash\n// slashes\n/* block\n comment */ sub vcl_recv { # trailing\n}\n", "c.vcl")
    assert [type(i) for i in prog.items] == [ast.Sub]


def test_precedence_follows_vcc():
    e = expr("1 + 2 * 3 == 7 && !req.http.a || req.http.b")
    assert isinstance(e, ast.BoolOp) and e.op == "||"
    left = e.operands[0]
    assert isinstance(left, ast.BoolOp) and left.op == "&&"
    cmp = left.operands[0]
    assert isinstance(cmp, ast.Compare) and cmp.op == "=="
    assert isinstance(cmp.left, ast.Arith) and cmp.left.op == "+"
    assert isinstance(cmp.left.right, ast.Arith) and cmp.left.right.op == "*"
    assert isinstance(left.operands[1], ast.Not)


def test_positions_are_line_and_column_of_the_token():
    body = stmts('\tif (req.url ~ "x") {\n\t\tset req.http.a = "b";\n\t}')
    cond, inner = body[0].branches[0]
    assert (cond.pos.line, cond.pos.col) == (2, 6)
    assert (cond.op_pos.line, cond.op_pos.col) == (2, 14)
    assert (inner[0].target_pos.line, inner[0].target_pos.col, inner[0].target_pos.length) == (3, 7, 10)


def test_statements():
    body = stmts("""
	set req.http.a = "1";
	set req.ttl += 1s;
	unset req.http.b;
	call foo;
	return;
	return (synth(404, "x"));
	return (vcl(other_label));
	synthetic("x");
	hash_data(req.url);
	ban("req.url ~ x");
	new obj = mod.thing(1, named = 2);
	std.log("x");
	{ set req.http.nested = "1"; }
""")
    kinds = [type(s).__name__ for s in body]
    assert kinds == ["Set", "Set", "Unset", "CallSub", "Return", "Return", "Return", "Synthetic",
                     "HashData", "Ban", "New", "ExprStmt", "Block"]
    assert body[1].op == "+="
    assert body[5].action == "synth" and len(body[5].args) == 2
    assert body[10].call.args[1].name == "named"


def test_elseif_variants_are_one_if():
    body = stmts("if (a) {} elseif (b) {} elsif (c) {} elif (d) {} else if (e) {} else {}")
    assert len(body) == 1
    assert len(body[0].branches) == 5 and body[0].else_body == []


def test_top_level_declarations():
    prog = parse("""vcl 4.0;
import std;
import directors from "/x";
include "other.vcl";
backend a { .host = "h"; .probe = { .url = "/"; } }
backend b none;
probe p { .request = "GET / HTTP/1.1" "Host: x"; }
acl l -pedantic +log { "1.2.3.4"; !"10.0.0.0"/8; ("maybe"); }
sub s {}
""", "t.vcl")
    kinds = [type(i).__name__ for i in prog.items]
    assert kinds == ["VclVersion", "Import", "Import", "Include", "Backend", "Backend", "Probe", "Acl", "Sub"]
    acl = prog.items[7]
    assert acl.flags == ["-pedantic", "+log"]
    assert [(e.negated, e.addr, e.mask, e.optional) for e in acl.entries] == [
        (False, "1.2.3.4", None, False), (True, "10.0.0.0", 8, False), (False, "maybe", None, True)]
    assert prog.items[5].attrs is None
    assert [s.value for s in prog.items[6].attrs[0].value] == ["GET / HTTP/1.1", "Host: x"]


# ------------------------------------------------------------------ regexes

@pytest.mark.parametrize("pcre, subject, matches", [
    ("^(?i)HTTP/1.1", "http/1.1", True),
    ("^(?i)HTTP/1.1", "xhttp/1.1", False),
    ("a(?i)b|c", "aB", True),
    ("a(?i)b|c", "C", True),
    ("a(?i)b|c", "Ab", False),
    ("(a(?i)b)c", "aBc", True),
    ("(a(?i)b)c", "aBC", False),
    ("[[:upper:]]", "abC", True),
    ("[[:upper:]]", "abc", False),
    ("^[[:alnum:]_-]+$", "a_b-1", True),
    ("[^[:digit:]]", "123", False),
    ("a\\z", "a\n", False),
    ("a\\Z", "a\n", True),
    ("a$", "a\n", True),
    ("\\Qa.b\\E", "a.b", True),
    ("\\Qa.b\\E", "axb", False),
    ("(?<w>o)\\k<w>", "foo", True),
    ("\\h", "a b", True),
    ("(?i:no-cache|private)", "Private", True),
])
def test_pcre_translation(pcre, subject, matches):
    assert Regex(pcre).match(subject) is matches, pcre_to_python(pcre)


def test_python_global_flags_at_start_are_kept():
    assert pcre_to_python("(?i)abc") == "(?i)abc"
    re.compile(pcre_to_python("(?i)abc"))


@pytest.mark.parametrize("subject, pattern, sub, all_, expected", [
    ("abc", "(b)", "[\\1\\0]", False, "a[bb]c"),
    ("abcb", "b", "x", True, "axcx"),
    ("abcb", "b", "x", False, "axcb"),
    ("abc", "(x)?b", "<\\1>", False, "a<>c"),
    ("abc", "b", "\\&\\&", False, "a&&c"),   # \& is a literal "&" (VRT_regsub)
    ("abc", "b", "\\\\", False, "a\\c"),
    ("a.b", "\\.", "\\9", False, "ab"),
    (None, "^", "x", False, "x"),
])
def test_regsub(subject, pattern, sub, all_, expected):
    assert regsub(Regex(pattern), subject, sub, all_) == expected
