"""logexpect's pieces: PCRE quoting, reading varnishlog's layout back, expect/fail semantics."""

from __future__ import annotations

import pytest

from vtest.errors import TestFailure
from vtest.logexpect import ALT, ANY, LAST, _parse_varnishlog, _Test, pcre, tag_by_name


def test_pcre_quoting():
    assert pcre(r"^\Qa.(b)\E$").match("a.(b)")
    assert not pcre(r"^\Qa.(b)\E$").match("axb")
    assert pcre(r"^x\Q*").match("x*")


def test_varnishlog_layouts_parse_back():
    raw = ["         0 CLI            - Rd ping\n",
           "      1001 ReqURL         c /a b\n",
           '      1001 Debug          c "x%0ay%00"\n']
    assert list(_parse_varnishlog(iter(raw), "raw")) == [
        (0, "CLI", "-", "Rd ping"), (1001, "ReqURL", "c", "/a b"), (1001, "Debug", "c", "x\ny")]
    grouped = ["*   << Request  >> 1001      \n", "-   Begin          req 1000 rxreq\n",
               "-   End            \n", "**  << BeReq    >> 1002      \n", "--  BerespHeader   X:  two\n", "\n"]
    assert list(_parse_varnishlog(iter(grouped), "request")) == [
        (1001, "Begin", "-", "req 1000 rxreq"), (1001, "End", "-", ""), (1002, "BerespHeader", "-", "X:  two")]


def test_expect_fields():
    t = _Test(["*", "=", "ReqURL", "^/a"], "expect")
    assert (t.skip, t.vxid, t.tag) == (ANY, LAST, "ReqURL")
    assert t.ok(5, "ReqURL", "/a", 5, None) and not t.ok(6, "ReqURL", "/a", 5, None)
    assert not t.ok(5, "ReqURL", "/b", 5, None)
    assert _Test(["?", "1001", "*"], "expect").skip == ALT
    assert _Test(["0", "*", "="], "expect").ok(1, "End", "", 0, "End")
    for bad in (["x", "1", "End"], ["0", "-1", "End"], ["0", "1", "NoSuchTag"], ["0", "1"]):
        with pytest.raises(TestFailure):
            _Test(bad, "expect")


def test_pcre_posix_classes():
    assert pcre("^[[:xdigit:]]{4}$").match("0aF9")
    assert not pcre("^[[:xdigit:]]{4}$").match("0aG9")


def test_tag_names_as_vsl_name2tag():
    # VSL_Name2Tag: any case, or a prefix only one tag starts with.
    assert tag_by_name("BeReqURL") == "BereqURL"
    assert tag_by_name("requrl") == "ReqURL"
    assert tag_by_name("BereqUR") == "BereqURL"
    assert tag_by_name("Bereq") is None          # BereqMethod, BereqURL, ...: not unique
    assert tag_by_name("Link") == "Link"
    assert _Test(["0", "1", "berequrl"], "expect").tag == "BereqURL"
