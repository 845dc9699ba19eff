"""The reader side of the shared log: grouping, the VSL query language, varnishlog's layout, cachelog's flags."""

from __future__ import annotations

import pytest

from cacheserver import cachelog, vsl
from cacheserver.vsl import Record, VslWriter
from cacheserver.vslq import Grouper, Query, QueryError, TagFilter, format_group, groups_of

SESS = [("Begin", "sess 0 HTTP/1"), ("SessOpen", "127.0.0.1 5000 a0 127.0.0.1 80 1.0 9"),
        ("Link", "req 2 rxreq"), ("SessClose", "REM_CLOSE 0.010"), ("End", "")]
REQ = [("Begin", "req 1 rxreq"), ("ReqMethod", "GET"), ("ReqURL", "/foo?x=1"), ("ReqHeader", "Host: example.com"),
       ("ReqHeader", "User-Agent: curl/8"), ("VCL_call", "RECV"), ("VCL_return", "hash"),
       ("Link", "bereq 3 fetch"), ("RespStatus", "200"), ("Timestamp", "Resp: 10.5 0.002500 0.000100"),
       ("ReqAcct", "78 0 78 211 5 216"), ("End", "")]
BEREQ = [("Begin", "bereq 2 fetch"), ("BereqURL", "/foo?x=1"), ("BerespStatus", "200"),
         ("BerespHeader", "Content-Length: 5"), ("End", "")]


def _records(*txns):
    """Records in the order the server writes them: the fetch ends first, then the request, then the session."""
    out = []
    for vxid, kind, recs in txns:
        out += [Record(vxid, kind, t, x) for t, x in recs]
    return out


LOG = _records((3, "b", BEREQ), (2, "c", REQ), (1, "c", SESS))


def _groups(grouping, query=None):
    return list(groups_of(iter(LOG), grouping, Query(query) if query else None))


def test_vxid_grouping_shows_each_transaction():
    assert [[t.vxid for t in g] for g in _groups("vxid")] == [[3], [2], [1]]


def test_request_grouping_waits_for_the_parent_and_leaves_sessions_out():
    groups = _groups("request")
    assert [[(t.vxid, t.level) for t in g] for g in groups] == [[(2, 1), (3, 2)]]


def test_session_grouping():
    groups = _groups("session")
    assert [[(t.vxid, t.level) for t in g] for g in groups] == [[(1, 1), (2, 2), (3, 3)]]


def test_session_grouping_lists_breadth_first_as_varnishd():
    """varnishd's VSLQ lists a group level by level: the session, its requests, then their fetches
    (l00005 waits for req 1001, req 1003, bereq 1002, bereq 1004 in that order)."""
    def req(vxid, bereq):
        return [("Begin", "req 1000 rxreq"), ("Link", f"bereq {bereq} pass"), ("End", "")]

    def bereq(parent):
        return [("Begin", f"bereq {parent} pass"), ("End", "")]

    sess = [("Begin", "sess 0 HTTP/1"), ("Link", "req 1001 rxreq"), ("Link", "req 1003 rxreq"), ("End", "")]
    log = _records((1002, "b", bereq(1001)), (1001, "c", req(1001, 1002)), (1004, "b", bereq(1003)),
                   (1003, "c", req(1003, 1004)), (1000, "c", sess))
    groups = list(groups_of(iter(log), "session"))
    assert [[(t.vxid, t.level) for t in g] for g in groups] == [
        [(1000, 1), (1001, 2), (1003, 2), (1002, 3), (1004, 3)]]


def test_vxid0_records_show_in_raw_grouping_only():
    assert Grouper("raw").feed(Record(0, "-", "CLI", "Rd ping"))
    g = Grouper("vxid")
    assert g.feed(Record(0, "-", "CLI", "Rd ping")) == [] and g.feed(Record(5, "c", "Begin", "req 4 rxreq")) == []


def test_layout_is_varnishlogs():
    lines = list(format_group(_groups("request")[0], "request"))
    assert lines[0] == "*   << Request  >> 2         "
    assert lines[1] == "-   Begin          req 1 rxreq"
    assert "**  << BeReq    >> 3         " in lines
    assert "--  BereqURL       /foo?x=1" in lines
    assert lines[-1] == ""
    raw = list(format_group(_groups("raw")[0], "raw"))
    assert raw == ["         3 Begin          b bereq 2 fetch"]


@pytest.mark.parametrize("query,hit", [
    ("ReqURL", True),
    ("ReqURL ~ \"^/foo\"", True),
    ("ReqURL ~ '^/bar'", False),
    ("ReqURL !~ bar", True),
    ("ReqURL eq '/foo?x=1'", True),
    ("ReqURL ne '/foo?x=1'", False),
    ("RespStatus == 200", True),
    ("RespStatus >= 500", False),
    ("RespStatus != 200 or ReqMethod eq GET", True),
    ("RespStatus == 200 and not ReqMethod eq GET", False),
    ("(RespStatus == 404 or RespStatus == 200) and ReqURL", True),
    ("ReqHeader:host eq example.com", True),
    ("ReqHeader:User-Agent ~ curl", True),
    ("ReqHeader:Cookie", False),
    ("Timestamp:Resp[2] > 0.002", True),
    ("Timestamp:Resp[2] > 1.5", False),
    ("ReqAcct[5] == 5", True),
    ("Req*,Resp* ~ \"^200$\"", True),
    ("vxid == 2", True),
    ("vxid == 99", False),
    ("{1}BerespStatus == 200", False),
    ("{2}BerespStatus == 200", True),
    ("{2+}BerespStatus == 200", True),
    ("{1-}ReqURL", True),
    ("Beresp* ~ 'content-length: 5'", False),
])
def test_query_language(query, hit):
    assert bool(_groups("request", query)) is hit


def test_caseless_regex():
    assert Query("Beresp* ~ 'content-length: 5'", caseless=True).matches(_groups("request")[0])


@pytest.mark.parametrize("query,pos,message", [
    ("ReqURL ~", 9, "Expected regular expression got ''"),
    ('ReqURL ~ "x" and', 17, "Expected VSL tag name got ''"),
    ("Foo ~ x", 1, "Tag name matches zero tags"),
    ("RespStatus == abc", 15, "Expected number got 'abc'"),
    ("ReqURL ~ '('", 10, "Regex error"),
    ("(ReqURL", 8, "Expected ')'"),
    ("ReqURL[0] ~ x", 8, "Expected positive integer"),
    # an unquoted value is letters, digits and _-+.* only (vxp_lexer's isword)
    ("ReqURL eq /c1", 11, "Syntax error"),
    ("ReqURL eq a%b", 12, "Syntax error"),
])
def test_malformed_query_says_where(query, pos, message):
    with pytest.raises(QueryError) as err:
        Query(query)
    text = str(err.value)
    assert text.startswith("Query expression error:\n")
    assert message in text and f"(Pos {pos})" in text
    assert query in text
    # the offending token is marked with #, as varnishlog marks it (nothing to mark at the end)
    marker = text.splitlines()[-1]
    assert len(marker) == len(query) and ("#" in marker) is (pos <= len(query))


def test_tag_filters():
    f = TagFilter()
    f.add("-i", "Req*")
    f.add("-x", "ReqHeader")
    assert f.shows(Record(1, "c", "ReqURL", "/")) and not f.shows(Record(1, "c", "ReqHeader", "A: b"))
    assert not f.shows(Record(1, "c", "RespStatus", "200"))
    g = TagFilter()
    g.add("-I", "ReqHeader:^Host")
    assert g.shows(Record(1, "c", "ReqHeader", "Host: x")) and not g.shows(Record(1, "c", "ReqHeader", "X: y"))
    assert g.shows(Record(1, "c", "ReqURL", "/"))
    h = TagFilter()
    h.add("-X", "^/private")
    assert not h.shows(Record(1, "c", "ReqURL", "/private/x")) and h.shows(Record(1, "c", "ReqURL", "/"))
    with pytest.raises(ValueError):
        TagFilter().add("-i", "NoSuchTag")


@pytest.fixture
def workdir(tmp_path):
    w = VslWriter(tmp_path / vsl.FILE_NAME, size=1 << 20)
    w.write(3, "b", BEREQ)
    w.write(2, "c", REQ)
    w.write(1, "c", SESS)
    yield tmp_path
    w.close()


def _cachelog(capsys, *argv):
    rc = cachelog.main(list(argv))
    out, err = capsys.readouterr()
    return rc, out, err


def test_cachelog_dump_grouped_and_filtered(workdir, capsys):
    rc, out, _ = _cachelog(capsys, "-n", str(workdir), "-d", "-g", "request", "-i", "ReqURL,BereqURL")
    assert rc == 0
    assert out.splitlines() == ["*   << Request  >> 2         ", "-   ReqURL         /foo?x=1",
                                "**  << BeReq    >> 3         ", "--  BereqURL       /foo?x=1", ""]


def test_cachelog_query_client_backend_and_limit(workdir, capsys):
    _, out, _ = _cachelog(capsys, "-n", str(workdir), "-d", "-q", "BerespStatus == 200")
    assert "<< BeReq    >> 3" in out and "<< Request" not in out
    _, out, _ = _cachelog(capsys, "-n", str(workdir), "-d", "-c")
    assert "BeReq" not in out and "<< Request  >> 2" in out and "<< Session  >> 1" in out
    _, out, _ = _cachelog(capsys, "-n", str(workdir), "-d", "-b")
    assert out.count("<<") == 1 and "BeReq" in out
    _, out, _ = _cachelog(capsys, "-n", str(workdir), "-d", "-k", "2")
    assert out.count("<<") == 2
    _, out, _ = _cachelog(capsys, "-n", str(workdir), "-d", "-g", "raw", "-x", "Begin,End")
    assert out.splitlines()[0] == "         3 BereqURL       b /foo?x=1"


def test_cachelog_write_and_read_back(workdir, tmp_path, capsys):
    out_file = tmp_path / "log.bin"
    rc, _, _ = _cachelog(capsys, "-n", str(workdir), "-d", "-w", str(out_file))
    assert rc == 0 and out_file.stat().st_size > 0
    _, direct, _ = _cachelog(capsys, "-n", str(workdir), "-d", "-g", "session")
    _, replay, _ = _cachelog(capsys, "-r", str(out_file), "-d", "-g", "session")
    assert replay == direct and "<< Session  >> 1" in replay


def test_cachelog_bad_query_and_missing_workdir(tmp_path, capsys):
    rc, _, err = _cachelog(capsys, "-n", str(tmp_path), "-d", "-q", "ReqURL ~")
    assert rc == 1 and "Query expression error" in err and "(Pos 9)" in err
    rc, _, err = _cachelog(capsys, "-n", str(tmp_path / "none"), "-d")
    assert rc == 1 and "does not exist" in err
    rc, _, err = _cachelog(capsys, "-n", str(tmp_path), "-d")
    assert rc == 1 and "missing" in err
