"""vtest's pure parts: tokenising, macros, expect's comparisons, PROXY headers, synthetic bodies."""

from __future__ import annotations

import pytest

from vtest.entities import parse_sockaddr, proxy_header
from vtest.errors import TestFailure
from vtest.http import compare, synth_body
from vtest.macros import Macros
from vtest.parse import split_commands


def toks(text: str) -> list[list[str]]:
    return [c.tokens for c in split_commands(text)]


def test_words_strings_blocks_and_comments():
    text = 'varnishtest "a title"\n# comment\n\n  server s1 {\n\trxreq\n\ttxresp\n} -start\n'
    assert toks(text) == [["varnishtest", "a title"], ["server", "s1", "\n\trxreq\n\ttxresp\n", "-start"]]


def test_nested_blocks_keep_inner_braces():
    (cmd,) = toks("varnish v1 -vcl { sub vcl_recv { if (x) { set a = b; } } }")
    assert cmd[3] == " sub vcl_recv { if (x) { set a = b; } } "


def test_quoted_escapes():
    (cmd,) = toks(r'send "a\tb\r\n\"q\"\\ \x41\101"')
    assert cmd == ["send", 'a\tb\r\n"q"\\ AA']


def test_backslash_newline_continues_a_command():
    assert toks("txreq -url /x \\\n    -hdr \"a: b\"\nrxresp") == [["txreq", "-url", "/x", "-hdr", "a: b"],
                                                               ["rxresp"]]


def test_line_numbers_follow_blocks():
    cmds = split_commands("a\nb {\n\n}\nc\n")
    assert [(c.line, c.tokens[0]) for c in cmds] == [(1, "a"), (2, "b"), (5, "c")]


@pytest.mark.parametrize("text", ['send "unterminated\n', "server s1 {\n rxreq\n"])
def test_unterminated_strings_and_blocks_fail(text):
    with pytest.raises(TestFailure):
        split_commands(text)


def test_macro_expansion_and_functions():
    m = Macros()
    m.define("s1_sock", "127.0.0.1 1234")
    assert m.expand("-connect ${s1_sock}") == "-connect 127.0.0.1 1234"
    assert m.expand("${string,repeat,3,ab}") == "ababab"
    assert m.expand('${ string repeat 2 "a,b" }') == "a,ba,b"
    assert m.expand("no macro") == "no macro"
    assert m.expand("${date}").endswith(" GMT")


def test_unknown_macro_fails_unless_ignored():
    m = Macros()
    with pytest.raises(TestFailure, match=r"Macro \$\{nope\} not found"):
        m.expand("x ${nope} y")
    m.ignore_unknown = True
    assert m.expand("x ${nope} y") == "x ${nope} y"


def test_undefine_removes_a_macro():
    m = Macros()
    m.define("v1_addr", "127.0.0.1")
    m.undefine("v1_addr")
    assert m.get("v1_addr") is None


@pytest.mark.parametrize("lhs,op,rhs,want", [
    ("200", "==", "200", True), ("200", "!=", "200", False), ("10", "<", "9", False),
    ("10", ">", "9", True), ("9.5", "<=", "9.5", True), ("2", ">=", "10", False),
    ("hello", "~", "^h.l+o$", True), ("hello", "!~", "^h", False),
    (None, "==", "<undef>", True), (None, "!=", "<undef>", False), (None, ">", "1", False),
    ("1", "<>", "1", None),
])
def test_compare(lhs, op, rhs, want):
    assert compare(lhs, op, rhs) is want


def test_synth_body_lines_of_64():
    body = synth_body(130)
    assert len(body) == 130
    assert body[63:64] == b"\n" and body[127:128] == b"\n" and body.endswith(b"\n")
    assert body[:3] == b"!\"#"


def test_proxy_headers():
    assert proxy_header(1, "1.2.3.4:1111 5.6.7.8:2222") == b"PROXY TCP4 1.2.3.4 5.6.7.8 1111 2222\r\n"
    v2 = proxy_header(2, "1.2.3.4:1111 5.6.7.8:2222")
    assert v2.startswith(b"\r\n\r\n\x00\r\nQUIT\n\x21\x11\x00\x0c")
    assert len(v2) == 16 + 12


@pytest.mark.parametrize("text,want", [("127.0.0.1 80", ("127.0.0.1", 80)), ("127.0.0.1:81", ("127.0.0.1", 81)),
                                       ("[::1]:82", ("::1", 82)), ("/tmp/sock", "/tmp/sock")])
def test_parse_sockaddr(text, want):
    assert parse_sockaddr(text) == want
