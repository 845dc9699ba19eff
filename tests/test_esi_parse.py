"""The ESI parser (cacheserver/esi_parse.py) against what varnishd 7.1 delivers for the same bodies.

CASES are origin bodies; RECORDED is what the real varnishd 7.1.1 delivered for each (includes answered
by the origin with `{HOST URL}`) and how many esi_errors / esi_warnings it counted, recorded with
`python tests/esi_reference.py`. test_against_live_varnishd re-checks the record when varnishd is here.
"""

from __future__ import annotations

import itertools

import pytest
from esi_reference import CLIENT_HOST, fragment_body, have_varnishd, varnishd_pages

from cacheserver.esi_parse import EsiFeatures, EsiParser, Include, parse, render

CASES = {
    # name: (body, url, features)
    "include": (b'<html><esi:include src="/frag"/></html>', "/p/include/page.html", ""),
    "src_whitespace": (b'<p>x<esi:include src="/a b"/>y<esi:include src="/c\td"/>z<esi:include src=" /e"/>w</p>',
                       "/p/ws", ""),
    "src_whitespace_host": (b'<p><esi:include src="http://h/a b"/>q</p>', "/p/wsh", ""),
    "relative": (b'<a><esi:include src="frag.html"/></a>', "/p/relative/dir/page.html", ""),
    "relative_query": (b'<a><esi:include src="f?x=1"/></a>', "/p/relq/dir/page?a=/b/c", ""),
    "http_host": (b'<a><esi:include src="http://other.example:81/x/y"/></a>', "/p/http/page", ""),
    "https_ignored": (b'<a>1<esi:include src="https://sec.example/x"/>2</a>', "/p/https/page", ""),
    "https_as_http": (b'<a>1<esi:include src="https://sec.example/x"/>2</a>', "/p/https2/page",
                      "+esi_ignore_https"),
    "entities": (b'<a><esi:include src="/e?b=1&amp;c=2&lt;&gt;&quot;&apos;&zz;"/></a>', "/p/ent/page", ""),
    "remove": (b'<p>a<esi:remove>hidden<esi:include src="/no"/>more</esi:remove>b</p>', "/p/remove/page", ""),
    "esi_comment": (b'<p><!--esi <b>in</b><esi:include src="/c"/> -->x</p>', "/p/esicmt/page", ""),
    "plain_comment": (b'<p><!-- <esi:include src="/n"/> -->y<esi:include src="/m"/></p>', "/p/cmt/page", ""),
    "esi_comment_tag": (b'<a>1<esi:comment text="hi"/>2</a>', "/p/ecomment/page", ""),
    "esi_comment_open": (b'<a>1<esi:comment text="hi">2</a>', "/p/ecomment2/page", ""),
    "esi_comment_end": (b'<a>1</esi:comment>2<esi:include src="/z"/></a>', "/p/ecomment3/page", ""),
    "not_xml": (b'hello <esi:include src="/x"/>', "/p/notxml/page", ""),
    "not_xml_disabled": (b'hello <esi:include src="/x"/>', "/p/notxml2/page", "+esi_disable_xml_check"),
    "leading_ws": (b'  \r\n\t<esi:include src="/x"/>!', "/p/lws/page", ""),
    "utf8_bom": (b'\xef\xbb\xbf<esi:include src="/x"/>', "/p/bom/page", ""),
    "bom_eb": (b'\xeb\xbb\xbf<esi:include src="/x"/>', "/p/bomeb/page", ""),
    "bom_eb_removed": (b'\xeb\xbb\xbf<esi:include src="/x"/>', "/p/bomeb2/page", "+esi_remove_bom"),
    "unterminated_include": (b'<p>x<esi:include src="/x"', "/p/unt1/page", ""),
    "unterminated_include2": (b'<p>x<esi:include src="/x" ', "/p/unt2/page", ""),
    "unterminated_attr": (b'<p>x<esi:include src="/x', "/p/unt3/page", ""),
    "unterminated_comment": (b'<p><esi:include src="/q"/><!-- x', "/p/unt9/page", ""),
    "unterminated_cdata": (b'<p><esi:include src="/q"/><![CDATA[ x', "/p/unt10/page", ""),
    "unterminated_other": (b'<p><esi:include src="/q"/><div', "/p/unt11/page", ""),
    "unterminated_lt": (b'<p><esi:include src="/q"/><', "/p/unt12/page", ""),
    "unterminated_remove": (b'<p>a<esi:remove>b<i>c</i>', "/p/unt4/page", ""),
    "unterminated_tag": (b'<p>a<esi:', "/p/unt5/page", ""),
    "unterminated_tag2": (b'<p>a<esi:include src="/q"/><es', "/p/unt6/page", ""),
    "unterminated_esi_comment": (b'<p><!--esi <b>x</b>', "/p/unt7/page", ""),
    "unterminated_esi_comment2": (b'<p><esi:include src="/q"/><!--esi <b>x</b>', "/p/unt8/page", ""),
    "remove_not_open": (b'<p>a</esi:remove>b<esi:include src="/q"/></p>', "/p/rno/page", ""),
    "remove_nested": (b'<p><esi:remove>a<esi:remove>b</esi:remove>c</esi:remove>d</p>', "/p/rnest/page", ""),
    "remove_empty": (b'<p>a<esi:remove/>b</p>', "/p/rempty/page", ""),
    "comment_in_remove": (b'<p><esi:remove>a<esi:comment text="x"/><!--esi b -->c</esi:remove>d</p>',
                          "/p/rcmt/page", ""),
    "bogus": (b'<p><esi:bogus foo="bar"/>x<esi:try><esi:attempt>y</esi:attempt></esi:try></p>',
              "/p/bogus/page", ""),
    "include_no_slash": (b'<p><esi:include src="/x">y</p>', "/p/noslash/page", ""),
    "include_no_src": (b'<p><esi:include foo="bar"/>x</p>', "/p/nosrc/page", ""),
    "include_two_src": (b'<p><esi:include src="/a" src="/b"/>x</p>', "/p/twosrc/page", ""),
    "unquoted": (b'<p><esi:include src=/a />x</p>', "/p/unq/page", ""),
    "unquoted_slash": (b'<p><esi:include src=/a/>x</p>', "/p/unq2/page", ""),
    "single_quotes": (b"<p><esi:include src='/a' alt=\"/b\"/>x</p>", "/p/sq/page", ""),
    "include_end_tag": (b'<p><esi:include src="/a"></esi:include>x</p>', "/p/iend/page", ""),
    "cdata": (b'<p><![CDATA[<esi:include src="/x"/>]]><esi:include src="/y"/></p>', "/p/cdata/page", ""),
    "comment_dashes": (b'<p><!-- a ---><esi:include src="/x"/>--><esi:include src="/y"/></p>',
                       "/p/dashes/page", ""),
    "esi_comment_dashes": (b'<p><!--esi a ---> b --></p>', "/p/edashes/page", ""),
    "other_elements": (b'<p><div <esi:include src="/x"/>></p>', "/p/other/page", ""),
    "other_elements_ignored": (b'<p><div <esi:include src="/x"/>></p>', "/p/other2/page",
                               "+esi_ignore_other_elements"),
    "attr_bad_char": (b'<p><esi:include src="/x" @foo/>y</p>', "/p/badattr/page", ""),
    "attr_spaces": (b'<p><esi:include  src = "/x"/>y</p>', "/p/attrsp/page", ""),
    "attr_bad_delim": (b'<p><esi:include src= "/x"/>y</p>', "/p/attrdelim/page", ""),
    "slash_space": (b'<p><esi:include src="/a"/ >y</p>', "/p/slsp/page", ""),
    "includes_word": (b'<p><esi:includes src="/a"/>y</p>', "/p/incs/page", ""),
    "upper_case": (b'<p><ESI:include src="/a"/>y<esi:include src="/b"/></p>', "/p/upper/page", ""),
    "only_esi_comment": (b'<p><!--esi hello--></p>', "/p/onlycmt/page", ""),
    "no_esi": (b'<p>plain <b>html</b></p>', "/p/noesi/page", ""),
    "empty_src": (b'<p><esi:include src=""/></p>', "/p/emptysrc/dir", ""),
    "onerror_attr": (b'<p><esi:include src="/a" onerror="continue"/>x</p>', "/p/onerr/page", ""),
    "onerror_attr_feature": (b'<p><esi:include src="/a" onerror="continue"/>x</p>', "/p/onerr2/page",
                             "+esi_include_onerror"),
    "many": (b'<html>\n<head><title>t</title></head><body>\n' + b''.join(
        b'<div class="c%d">x%d<esi:include src="/f/%d"/><!-- c --><esi:remove>r%d</esi:remove></div>\n'
        % (i, i, i, i) for i in range(20)) + b'</body></html>\n', "/p/many/page", ""),
}

RECORDED: dict[str, tuple[bytes, int, int]] = {
    'include': (b'<html>{ref.test /frag}</html>', 0, 0),
    'src_whitespace': (b'<p>xyzw</p>', 3, 0),
    'src_whitespace_host': (b'<p>q</p>', 1, 0),
    'relative': (b'<a>{ref.test /p/relative/dir/frag.html}</a>', 0, 0),
    'relative_query': (b'<a>{ref.test /p/relq/dir/f?x=1}</a>', 0, 0),
    'http_host': (b'<a>{other.example:81 /x/y}</a>', 0, 0),
    'https_ignored': (b'<a>12</a>', 0, 1),
    'entities': (b'<a>{ref.test /e?b=1&c=2<>"\'&zz;}</a>', 0, 0),
    'remove': (b'<p>ab</p>', 1, 0),
    'esi_comment': (b'<p> <b>in</b>{ref.test /c} x</p>', 0, 0),
    'plain_comment': (b'<p><!-- <esi:include src="/n"/> -->y{ref.test /m}</p>', 0, 0),
    'esi_comment_tag': (b'<a>12</a>', 0, 0),
    'esi_comment_open': (b'<a>12</a>', 1, 0),
    'esi_comment_end': (b'<a>12{ref.test /z}</a>', 1, 0),
    'not_xml': (b'hello <esi:include src="/x"/>', 0, 0),
    'leading_ws': (b'  \r\n\t{ref.test /x}!', 0, 0),
    'utf8_bom': (b'\xef\xbb\xbf<esi:include src="/x"/>', 0, 0),
    'bom_eb': (b'\xeb\xbb\xbf<esi:include src="/x"/>', 0, 0),
    'unterminated_include': (b'<p>x', 1, 0),
    'unterminated_include2': (b'<p>x', 1, 0),
    'unterminated_attr': (b'<p>x', 1, 0),
    'unterminated_comment': (b'<p>{ref.test /q}<!-- x', 1, 0),
    'unterminated_cdata': (b'<p>{ref.test /q}<![CDATA[ x', 1, 0),
    'unterminated_other': (b'<p>{ref.test /q}<div', 1, 0),
    'unterminated_lt': (b'<p>{ref.test /q}<', 1, 0),
    'unterminated_remove': (b'<p>a', 0, 0),
    'unterminated_tag': (b'<p>a<esi:', 1, 0),
    'unterminated_tag2': (b'<p>a{ref.test /q}<es', 1, 0),
    'unterminated_esi_comment': (b'<p><!--esi <b>x</b>', 0, 0),
    'unterminated_esi_comment2': (b'<p>{ref.test /q} <b>x</b>', 0, 0),
    'remove_not_open': (b'<p>ab{ref.test /q}</p>', 1, 0),
    'remove_nested': (b'<p>cd</p>', 2, 0),
    'remove_empty': (b'<p>ab</p>', 1, 0),
    'comment_in_remove': (b'<p>d</p>', 2, 0),
    'bogus': (b'<p>xy</p>', 5, 0),
    'include_no_slash': (b'<p>{ref.test /x}y</p>', 0, 1),
    'include_no_src': (b'<p>x</p>', 1, 0),
    'include_two_src': (b'<p>x</p>', 1, 0),
    'unquoted': (b'<p>{ref.test /a}x</p>', 0, 0),
    'unquoted_slash': (b'<p>x</p>', 1, 0),
    'single_quotes': (b'<p>{ref.test /a}x</p>', 0, 0),
    'include_end_tag': (b'<p>{ref.test /a}x</p>', 1, 1),
    'cdata': (b'<p><![CDATA[<esi:include src="/x"/>]]>{ref.test /y}</p>', 0, 0),
    'comment_dashes': (b'<p><!-- a ---><esi:include src="/x"/>-->{ref.test /y}</p>', 0, 0),
    'esi_comment_dashes': (b'<p> a ---> b </p>', 0, 0),
    'other_elements': (b'<p><div <esi:include src="/x"/>></p>', 0, 0),
    'attr_bad_char': (b'<p>y</p>', 1, 0),
    'attr_spaces': (b'<p>y</p>', 1, 0),
    'attr_bad_delim': (b'<p>y</p>', 1, 0),
    'slash_space': (b'<p>y</p>', 1, 0),
    'includes_word': (b'<p>y</p>', 1, 0),
    'upper_case': (b'<p><ESI:include src="/a"/>y{ref.test /b}</p>', 0, 0),
    'only_esi_comment': (b'<p> hello</p>', 0, 0),
    'no_esi': (b'<p>plain <b>html</b></p>', 0, 0),
    'empty_src': (b'<p>{ref.test /p/emptysrc/}</p>', 0, 0),
    'onerror_attr': (b'<p>{ref.test /a}x</p>', 0, 0),
    'many': (b'<html>\n<head><title>t</title></head><body>\n<div class="c0">x0{ref.test /f/0}<!-- c --></div>\n<div class="c1">x1{ref.test /f/1}<!-- c --></div>\n<div class="c2">x2{ref.test /f/2}<!-- c --></div>\n<div class="c3">x3{ref.test /f/3}<!-- c --></div>\n<div class="c4">x4{ref.test /f/4}<!-- c --></div>\n<div class="c5">x5{ref.test /f/5}<!-- c --></div>\n<div class="c6">x6{ref.test /f/6}<!-- c --></div>\n<div class="c7">x7{ref.test /f/7}<!-- c --></div>\n<div class="c8">x8{ref.test /f/8}<!-- c --></div>\n<div class="c9">x9{ref.test /f/9}<!-- c --></div>\n<div class="c10">x10{ref.test /f/10}<!-- c --></div>\n<div class="c11">x11{ref.test /f/11}<!-- c --></div>\n<div class="c12">x12{ref.test /f/12}<!-- c --></div>\n<div class="c13">x13{ref.test /f/13}<!-- c --></div>\n<div class="c14">x14{ref.test /f/14}<!-- c --></div>\n<div class="c15">x15{ref.test /f/15}<!-- c --></div>\n<div class="c16">x16{ref.test /f/16}<!-- c --></div>\n<div class="c17">x17{ref.test /f/17}<!-- c --></div>\n<div class="c18">x18{ref.test /f/18}<!-- c --></div>\n<div class="c19">x19{ref.test /f/19}<!-- c --></div>\n</body></html>\n', 0, 0),
    'https_as_http': (b'<a>1{sec.example /x}2</a>', 0, 1),
    'not_xml_disabled': (b'hello {ref.test /x}', 0, 0),
    'bom_eb_removed': (b'{ref.test /x}', 0, 0),
    'other_elements_ignored': (b'<p><div {ref.test /x}></p>', 0, 0),
    'onerror_attr_feature': (b'<p>{ref.test /a}x</p>', 0, 0),
}


def _features(spec: str) -> EsiFeatures:
    names = {f.lstrip("+") for f in spec.split(",") if f}
    return EsiFeatures(**{n.removeprefix("esi_"): True for n in names})


def _fragment(inc: Include) -> bytes:
    return fragment_body(inc.host or CLIENT_HOST, inc.src)


def _deliver(name: str, chunks: list[int] | None = None) -> tuple[bytes, int, int]:
    body, url, feats = CASES[name]
    doc, ps = parse(body, url, _features(feats), chunks)
    return render(doc, body, _fragment), len(ps.errors), len(ps.warnings)


@pytest.mark.parametrize("name", sorted(CASES))
def test_same_page_as_varnishd(name: str) -> None:
    assert _deliver(name) == RECORDED[name]


SPLIT_DOCS = ["include", "esi_comment", "plain_comment", "remove", "bogus", "entities", "cdata",
              "comment_dashes", "include_two_src", "unquoted", "leading_ws", "bom_eb_removed",
              "include_end_tag", "unterminated_tag2", "comment_in_remove", "single_quotes", "many"]


@pytest.mark.parametrize("name", SPLIT_DOCS)
def test_any_split_gives_the_same_page(name: str) -> None:
    """A chunk boundary anywhere (one split, or every byte its own chunk) changes nothing."""
    want = RECORDED[name]
    n = len(CASES[name][0])
    for cut in range(1, n):
        assert _deliver(name, [cut]) == want, cut
    assert _deliver(name, [1] * n) == want
    for a, b in itertools.combinations(range(1, min(n, 40), 3), 2):
        assert _deliver(name, [a, b - a]) == want, (a, b)


def test_segments_are_byte_ranges_and_includes() -> None:
    body = b'<p>a<esi:include src="/x"/>b<esi:remove>r</esi:remove>c</p>'
    doc, ps = parse(body, "/")
    assert doc is not None and not ps.errors
    assert doc.segments == [(0, 4), Include("/x"), (27, 28), (54, 59)]
    assert doc.length == len(body)
    assert doc.verbatim_bytes() == 10
    assert doc.includes() == [Include("/x")]


def test_adjacent_verbatim_ranges_merge_across_chunks() -> None:
    body = b"<p>" + b"x" * 1000 + b'<esi:include src="/x"/></p>'
    ps = EsiParser("/")
    for i in range(0, len(body), 7):
        ps.feed(body[i:i + 7])
    doc = ps.finish()
    assert doc is not None and doc.segments[0] == (0, 1003) and doc.segments[1] == Include("/x")


def test_no_esi_is_none() -> None:
    assert parse(b"<p>plain</p>")[0] is None
    assert parse(b"not xml <esi:include src='/x'/>")[0] is None
    assert parse(b"")[0] is None


def test_onerror_continue_only_with_the_feature() -> None:
    body = b'<esi:include src="/a" onerror="continue"/><esi:include onerror="abort" src="/b"/>'
    doc, _ = parse(body, "/", EsiFeatures(include_onerror=True))
    assert doc.includes() == [Include("/a", None, True), Include("/b", None, False)]
    doc, _ = parse(body, "/")
    assert doc.includes() == [Include("/a"), Include("/b")]


def test_http_include_without_path() -> None:
    # varnishd asserts (the child restarts); we include the host's root instead
    doc, _ = parse(b'<esi:include src="http://h.example"/>', "/")
    assert doc.includes() == [Include("/", "h.example")]


def test_attribute_value_is_bounded() -> None:
    ps = EsiParser("/")
    ps.feed(b'<p><esi:include src="')
    for _ in range(100):
        ps.feed(b"a" * 1000)
    ps.feed(b'"/>after</p>')
    doc = ps.finish()
    assert ps.errors and doc.includes() == []
    assert render(doc, b"") is not None
    assert ps._attr_val is None


def test_big_body_is_linear() -> None:
    """A 20 MB page of many tags parses in bounded time with segments proportional to the tags."""
    unit = b'<div>' + b'x' * 1000 + b'<esi:include src="/f"/><!-- c --></div>\n'
    body = unit * (20_000_000 // len(unit))
    ps = EsiParser("/")
    for i in range(0, len(body), 65536):
        ps.feed(body[i:i + 65536])
    doc = ps.finish()
    assert len(doc.includes()) == len(body) // len(unit)
    assert doc.verbatim_bytes() == len(body) - len(doc.includes()) * len(b'<esi:include src="/f"/>')


@pytest.mark.skipif(not have_varnishd(), reason="varnishd is not installed")
def test_against_live_varnishd() -> None:
    """The record above still is what varnishd delivers."""
    assert varnishd_pages(CASES) == RECORDED
