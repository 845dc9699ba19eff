"""cache_rfc2616.c, cache_range.c and cache_ban.c rules as plain function calls, with a frozen clock.

Fast on purpose: these are the tests the mutation run (tools/mutate.py) uses for rfc2616.py, ranges.py
and bans.py. Every expected value comes from varnishd 7.1.1: the same inputs are in
tests/vtc/r00001.vtc (ranges), r00002.vtc (TTLs) and r00003.vtc (bans), which pass under varnishtest.
"""

from __future__ import annotations

import re
from email.utils import formatdate
from types import SimpleNamespace

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cacheserver import rfc2616
from cacheserver.bans import BanError, BanList, build, split_args
from cacheserver.ranges import RangeError, if_range_matches, object_last_modified, parse_range
from cacheserver.rfc2616 import bad_vary, collect_header, compute_ttl, header_field, parse_date, rfc2616_time
from vcl.runtime import Context, Headers, HttpMessage

NOW = 1_700_000_000.0
PARAMS = SimpleNamespace(default_ttl=120.0, default_grace=10.0, default_keep=0.0, clock_skew=10.0)
D1990 = "Mon, 01 Jan 1990 00:00:00 GMT"
E1990 = "Mon, 01 Jan 1990 00:01:40 GMT"


def http_date(t: float) -> str:
    return formatdate(t, usegmt=True)


def ttl_of(headers, status=200, params=PARAMS):
    ctx = Context(method="vcl_backend_response", hash_parts=[])
    ctx.beresp = HttpMessage(status=status, reason="", headers=Headers(headers))
    t_origin = compute_ttl(ctx, params, NOW)
    return ctx.beresp_ttl, ctx.beresp_grace, t_origin


@pytest.mark.parametrize("headers, status, ttl, grace", [
    ([], 200, 120, 10),
    ([("Date", D1990), ("Expires", E1990)], 200, 100, 10),          # clocks disagree: Expires - Date
    ([("Date", D1990), ("Expires", "Sun, 31 Dec 1989 23:59:59 GMT")], 200, 0, 10),   # before Date
    ([("Expires", E1990)], 200, 0, 10),                             # no Date, Expires in our past
    ([("Expires", "garbage")], 200, 120, 10),                       # unparseable: as if absent
    ([("Expires", "Thu, 01 Jan 1970 00:00:00 GMT")], 200, 120, 10),  # VTIM_parse gives 0: absent
    ([("Cache-Control", "max-age=10x")], 200, 0, 10),
    ([("Cache-Control", 'max-age="30"')], 200, 0, 10),
    ([("Cache-Control", "max-age="), ("Expires", E1990)], 200, 0, 10),   # empty value: 0, not Expires
    ([("Cache-Control", "max-age=-5")], 200, 0, 10),
    ([("Cache-Control", "max-age=30.9")], 200, 30, 10),
    ([("Cache-Control", "max-age=30 , public")], 200, 30, 10),
    ([("Cache-Control", "max-age=30, s-maxage=40")], 200, 40, 10),
    ([("Cache-Control", "max-age=30"), ("Age", "5")], 200, 25, 10),
    ([("Cache-Control", "max-age=30"), ("Age", "5x")], 200, 30, 10),
    ([("Cache-Control", "max-age=30"), ("Age", "50")], 200, -20, 10),
    ([("Cache-Control", "max-age=30, stale-while-revalidate=")], 200, 30, 0),
    ([("Cache-Control", "max-age=30, stale-while-revalidate=5")], 200, 30, 5),
    ([], 302, 0, 10),                                               # -1, which VCL reads as 0
    ([("Cache-Control", "max-age=5")], 302, 5, 10),
    ([("Cache-Control", "max-age=5")], 500, 0, 10),
    ([("Cache-Control", "public"), ("Cache-Control", "max-age=33")], 200, 33, 10),
    ([("Cache-Control", "MAX-AGE=44")], 200, 44, 10),
    ([("Cache-Control", "max-age=30, max-age=20")], 200, 30, 10),   # the first one decides
    ([("Cache-Control", "xmax-age=30")], 200, 120, 10),
    # relative to the clock (r00002.vtc's /ahead, /near, /past)
    ([("Date", http_date(NOW + 20)), ("Expires", http_date(NOW + 70))], 200, 50, 10),
    ([("Date", http_date(NOW + 5)), ("Expires", http_date(NOW + 1000))], 200, 1000, 10),
    ([("Date", http_date(NOW)), ("Expires", http_date(NOW - 30))], 200, 0, 10),
    # Expires equal to a Date near our clock is not "expired already": it counts from our clock
    ([("Date", http_date(NOW + 5)), ("Expires", http_date(NOW + 5))], 200, 5, 10),
    # a TTL of 0 from the clock still takes stale-while-revalidate (the test is ttl >= 0)
    ([("Date", http_date(NOW - 5)), ("Expires", http_date(NOW - 2)),
      ("Cache-Control", "stale-while-revalidate=7")], 200, 0, 7),
    ([("Cache-Control", "max-age=0, stale-while-revalidate=5")], 200, 0, 5),
])
def test_ttl_and_grace_as_rfc2616_ttl_sets_them(headers, status, ttl, grace):
    got_ttl, got_grace, _ = ttl_of(headers, status)
    assert (got_ttl, got_grace) == (ttl, grace)


def test_clock_skew_is_the_parameter_and_its_edge_is_exclusive():
    # |Date - now| == clock_skew is outside the window: Expires then counts from Date.
    headers = [("Date", http_date(NOW + 10)), ("Expires", http_date(NOW + 70))]
    assert ttl_of(headers)[0] == 60
    assert ttl_of(headers, params=SimpleNamespace(**{**vars(PARAMS), "clock_skew": 11.0}))[0] == 70
    assert ttl_of([("Date", http_date(NOW - 9)), ("Expires", http_date(NOW + 70))])[0] == 70


def test_age_moves_the_origin_time_and_keep_is_the_parameter():
    assert ttl_of([("Age", "7")])[2] == NOW - 7
    assert ttl_of([])[2] == NOW
    ctx = Context(method="vcl_backend_response", hash_parts=[])
    ctx.beresp = HttpMessage(status=200, headers=Headers([("Age", "7")]))
    compute_ttl(ctx, SimpleNamespace(**{**vars(PARAMS), "default_keep": 3.0}), NOW)
    assert (ctx.beresp_age, ctx.beresp_keep) == (7.0, 3.0)


def test_collect_header_joins_fields_where_the_first_was():
    h = Headers([("A", "1"), ("Cache-Control", "public"), ("B", "2"), ("cache-control", "max-age=3")])
    collect_header(h, "Cache-Control")
    assert h.get_all("Cache-Control") == ["public, max-age=3"]
    assert [f[0] for f in h._fields] == ["A", "Cache-Control", "B"]
    one = Headers([("Vary", "X")])
    collect_header(one, "Vary")
    assert one.get_all("Vary") == ["X"]


def test_bad_vary_is_a_field_name_over_127_bytes():
    assert not bad_vary(None) and not bad_vary("") and not bad_vary("A, " + "x" * 127)
    assert bad_vary("A, " + "x" * 128) and bad_vary("x" * 128 + ",B")
    assert not bad_vary("a" * 100 + "," + "b" * 100)           # two names, each short enough


@pytest.mark.parametrize("text, value", [
    ("30", 30), (" 30", 30), ("30 ", 30), ("30,", 30), ("30.5", 30), ("30x", 0), ("-3", 0), ("", 0),
    ("+4", 4), ("99999999999", 2 ** 32 - 1), ("30\t,", 30), ("30X", 0), ("30\x0b", 0),
    # strtoul negates a number after blanks in unsigned arithmetic: huge, so UINT_MAX
    (" -5", 2 ** 32 - 1), (" -18446744073709551615", 1), (" -99999999999999999999", 2 ** 32 - 1),
    (" -18446744073709551616", 2 ** 32 - 1), ("18446744073709551616", 2 ** 32 - 1),
    ("4294967295", 2 ** 32 - 1), ("4294967294", 2 ** 32 - 2),
])
def test_rfc2616_time(text, value):
    assert rfc2616_time(text) == value


@pytest.mark.parametrize("value, name, found", [
    ("max-age=3", "max-age", "3"), ("public, max-age = 3", "max-age", "3"), ("max-age", "max-age", None),
    ("xmax-age=3", "max-age", False), ("max-agex=3", "max-age", False), ("a=1,max-age=2", "max-age", "2"),
    ("", "max-age", False), ("max-age;x=1", "max-age", None), (",,max-age=1", "max-age", "1"),
    ("Xmax-age=3", "max-age", False), ("max-age X=3", "max-age", None), ("max-age=X3", "max-age", "X3"),
    ("max-age\t=\t3", "max-age", "3"), ("\tmax-age=3", "max-age", "3"),
])
def test_header_field(value, name, found):
    assert header_field(value, name) == found


# Ranges: cache_range.c on a 10-byte object (r00001.vtc)
@pytest.mark.parametrize("spec, span", [
    ("bytes=0-9", (0, 9)), ("bytes=2-10", (2, 9)), ("bytes=5-1000", (5, 9)), ("bytes=-20", (0, 9)),
    ("bytes=-10", (0, 9)), ("bytes=-3", (7, 9)), ("bytes=9-", (9, 9)), ("bytes=0-", (0, 9)),
    ("bytes=9-9", (9, 9)), ("BYTES=1-2", (1, 2)), ("bytes=0-9223372036854775807", (0, 9)),
])
def test_range_spans(spec, span):
    assert parse_range(spec, 10) == span


# (spec, vrg_dorange's RANGE_FAIL reason): all 416 in r00001.vtc; the reasons are cache_range.c's.
@pytest.mark.parametrize("spec, reason", [
    ("bytes=-0", "No low, high is zero"), ("bytes=10-", "high smaller than low"),
    ("bytes=10-20", "high smaller than low"), ("bytes=5-4", "high smaller than low"),
    ("bytes=-", "Neither high nor low"), ("bytes=1-2x", "Trailing stuff"), ("bytes=1-2:", "Trailing stuff"),
    ("bytes=0-3,5-6", "Trailing stuff"), ("items=0-3", "Not Bytes"), ("bytes= 1 - 2", "Missing hyphen"),
    ("bytes=3", "Missing hyphen"), ("bytes=0-99999999999999999999", "High number too big"),
    ("bytes=99999999999999999999-", "Low number too big"), ("bytes=9223372036854775807-", "high smaller than low"),
    ("bytes=9223372036854775808-", "Low number too big"), ("bytes=0-9223372036854775808", "High number too big"),
    ("bytes=1 -2", "Missing hyphen"), ("bytes=1- 2", "Trailing stuff"), ("bytes=\u0661-2", "Missing hyphen"),
    ("bytes=A-2", "Missing hyphen"),
])
def test_range_refused(spec, reason):
    with pytest.raises(RangeError) as info:
        parse_range(spec, 10)
    assert str(info.value) == reason


def test_range_of_unknown_length_is_ignored():
    assert parse_range("bytes=0-3", -1) is None
    assert parse_range("nonsense", -1) is None


@given(st.binary(max_size=40), st.integers(0, 60), st.integers(0, 60) | st.none())
def test_range_against_a_reference_slice(body, lo, hi):
    """bytes=LO-HI (or LO-) serves body[LO:HI+1] when LO is inside the body, else 416 (HI < LO too)."""
    spec = f"bytes={lo}-{'' if hi is None else hi}"
    if lo >= len(body) or (hi is not None and hi < lo):
        with pytest.raises(RangeError):
            parse_range(spec, len(body))
        return
    first, last = parse_range(spec, len(body))
    assert body[first:last + 1] == body[lo:None if hi is None else hi + 1]


@given(st.binary(max_size=40), st.integers(1, 60))
def test_suffix_range_against_a_reference_slice(body, n):
    """bytes=-N serves the last N bytes (all of them when N is larger); an empty body has none."""
    if not body:
        with pytest.raises(RangeError):
            parse_range(f"bytes=-{n}", 0)
        return
    first, last = parse_range(f"bytes=-{n}", len(body))
    assert body[first:last + 1] == body[-n:]


# Conditional requests: RFC2616_Do_Cond (r00004.vtc)
LM = "Mon, 01 Jan 1990 00:00:00 GMT"


def cond(req_headers, resp_headers, last_modified=NOW - 100):
    from cacheserver.ranges import not_modified
    req = HttpMessage("GET", "/", headers=Headers(req_headers))
    resp = HttpMessage(status=200, headers=Headers(resp_headers))
    return not_modified(req, resp, NOW, last_modified)


E = [("ETag", '"abc"'), ("Last-Modified", LM)]


@pytest.mark.parametrize("req_headers, resp_headers, answer", [
    ([("If-None-Match", '"abc"')], E, True),
    ([("If-None-Match", 'W/"abc"')], E, True),
    ([("If-None-Match", '"x", "abc"')], E, False),            # the whole value, not a list
    ([("If-None-Match", "*")], E, False),
    ([("If-None-Match", '"abd"')], E, False),
    ([("If-None-Match", '"abd"'), ("If-Modified-Since", LM)], E, False),   # IMS not looked at
    ([("If-None-Match", 'W/"abc"'), ("Range", "bytes=0-1")], E, False),    # strong with Range
    ([("If-None-Match", '"abc"'), ("Range", "bytes=0-1")], E, True),
    ([("If-None-Match", '"abc"'), ("Range", "bytes=0-1")], [("ETag", 'W/"abc"')], False),
    ([("If-None-Match", 'W/"abc"'), ("Range", "bytes=0-1")], [("ETag", 'W/"abc"')], False),  # equal, weak
    ([("If-None-Match", '"abc"')], [("ETag", 'W/"abc"')], True),
    ([("If-Modified-Since", LM)], E, True),
    ([("If-Modified-Since", "Sun, 31 Dec 1989 23:59:59 GMT")], E, False),
    ([("If-Modified-Since", "garbage")], E, False),
    ([("If-Modified-Since", "Fri, 01 Jan 2100 00:00:00 GMT")], E, False),   # later than the request
    ([("If-None-Match", '"abc"'), ("If-Modified-Since", LM)], [("Last-Modified", LM)], False),
    ([("If-Modified-Since", "Mon, 01 Jan 1990 00:00:01 GMT")], [("Last-Modified", LM)], True),
    ([("If-Modified-Since", LM)], [("Last-Modified", "garbage")], False),
    ([], E, False),
])
def test_conditional_request(req_headers, resp_headers, answer):
    assert cond(req_headers, resp_headers) is answer


def test_conditional_request_without_last_modified_uses_the_object_time():
    ims = [("If-Modified-Since", http_date(NOW - 100))]
    assert cond(ims, [], last_modified=NOW - 100) is True
    assert cond(ims, [], last_modified=NOW - 99) is False
    assert cond([("If-Modified-Since", http_date(NOW))], [], last_modified=NOW - 5) is True   # == t_req


# Bans: cache_ban.c (r00003.vtc)
def obj(headers=(), status=200, ttl=100.0, grace=10.0, keep=0.0, t_origin=NOW - 30):
    return SimpleNamespace(http=HttpMessage(status=status, headers=Headers(list(headers))), ttl=ttl,
                           grace=grace, keep=keep, t_origin=t_origin)


def kills(expr, oc, req=None):
    counters = SimpleNamespace(**{k: 0 for k in ("bans", "bans_completed", "bans_added", "bans_req",
                                                  "bans_obj", "bans_dups", "bans_deleted")})
    ban = BanList(counters).add(expr)
    return ban.matches(oc, req, NOW)


TAGGED, UNTAGGED = obj([("X-Tag", "foo")]), obj()


@pytest.mark.parametrize("expr, tagged, untagged", [
    ("obj.http.x-tag != foo", False, True), ("obj.http.x-tag !~ fo", False, False),
    ("obj.http.x-tag == foo", True, False), ("obj.http.x-tag ~ .", True, False),
    ("obj.http.x-tag != bar", True, True),
])
def test_ban_against_a_missing_object_header(expr, tagged, untagged):
    assert (kills(expr, TAGGED), kills(expr, UNTAGGED)) == (tagged, untagged)


@pytest.mark.parametrize("expr, with_h, without_h", [
    ("req.http.x-h != bar", False, True), ("req.http.x-h == bar", True, False),
    ("req.http.x-h !~ ba", False, False), ("req.http.x-h ~ ba", True, False),
])
def test_ban_against_a_missing_request_header(expr, with_h, without_h):
    def req(headers):
        return HttpMessage("GET", "/", headers=Headers(headers))
    assert (kills(expr, UNTAGGED, req([("X-H", "bar")])), kills(expr, UNTAGGED, req([]))) == (with_h, without_h)


@pytest.mark.parametrize("op, k9, k10, k11", [
    (">", 0, 0, 1), (">=", 0, 1, 1), ("<", 1, 0, 0), ("<=", 1, 1, 0), ("==", 0, 1, 0), ("!=", 1, 0, 1),
])
def test_ban_duration_boundaries(op, k9, k10, k11):
    for field in ("grace", "keep"):
        got = [kills(f"obj.{field} {op} 10s", obj(**{field: v})) for v in (9.0, 10.0, 11.0)]
        assert got == [bool(k9), bool(k10), bool(k11)], field
    # obj.ttl is what is left (ttl - age), obj.age the time since the origin: 30 s here
    got = [kills(f"obj.ttl {op} 10s", obj(ttl=30.0 + v)) for v in (9.0, 10.0, 11.0)]
    assert got == [bool(k9), bool(k10), bool(k11)]
    got = [kills(f"obj.age {op} 30s", obj(t_origin=NOW - v)) for v in (29.0, 30.0, 31.0)]
    assert got == [bool(k9), bool(k10), bool(k11)]


def test_ban_on_url_and_status_and_conjunction():
    req = HttpMessage("GET", "/a/b")
    assert kills("req.url ~ ^/a && obj.status == 200", UNTAGGED, req)
    assert not kills("req.url ~ ^/a && obj.status == 404", UNTAGGED, req)
    assert not kills("req.url == /a", UNTAGGED, req)
    assert kills("obj.status != 404", UNTAGGED)
    assert not kills("req.url ~ .", UNTAGGED, None)        # the lurker has no request
    assert not kills("req.http.x ~ .", UNTAGGED, None)


@given(st.lists(st.tuples(st.sampled_from(["req.url", "req.http.x-a", "obj.http.x-b", "obj.status"]),
                          st.sampled_from(["==", "!=", "~", "!~"]),
                          st.text(alphabet="abcxyz019/.-_", min_size=1, max_size=8)),
                min_size=1, max_size=4))
def test_ban_expression_round_trip(tests):
    """A ban's text (ban.list) parses back to the same tests."""
    expr = " && ".join(f"{f} {op} {arg}" for f, op, arg in tests)
    built = build(split_args(expr))
    again = build(split_args(" && ".join(t.text() for t in built)))
    assert [(t.field, t.header, t.op, t.arg) for t in again] == [(t.field, t.header, t.op, t.arg) for t in built]
    assert [t.text() for t in built] == [f"{f} {op} {arg}" for f, op, arg in tests]


@given(st.integers(0, 10 ** 6), st.sampled_from(["ms", "s", "m", "h", "d", "w", "y"]))
def test_ban_duration_round_trip(n, unit):
    # ban.list shows whole milliseconds, truncated, as varnishd 7.1.1 does: 4015ms (4.015 s, a double a
    # little below it) shows as 4.014s there too, so the text read back is at most 1 ms short
    built = build(split_args(f"obj.ttl > {n}{unit}"))[0].number
    again = build(split_args(build(split_args(f"obj.ttl > {n}{unit}"))[0].text()))[0].number
    assert -1e-9 <= built - again < 0.001 + 1e-9


def test_ban_durations_are_truncated_to_the_millisecond_as_varnishd():
    # varnishd 7.1.1's ban.list for each (checked with varnishtest)
    shown = {"4015ms": "4.014s", "4.015s": "4.014s", "1.001s": "1s", "8.2s": "8.200s", "0.29s": "290ms",
             "4.03s": "4.030s", "16.1s": "16.100s"}
    assert {arg: build(split_args(f"obj.ttl > {arg}"))[0].text().split()[-1] for arg in shown} == shown


@pytest.mark.parametrize("expr, status, message", [
    ("req.url", 104, "Too few parameters"),
    ("req.url ~ a && req.url", 106, "Wrong number of arguments"),
    ("req.url ~ a || req.url ~ b", 106, 'Found "||" expected &&'),
    # varnishd 7.1.1's words (varnishadm ban ...)
    ('req.url == "a"b', 106, "Wrong number of arguments"),      # a word after a closing quote is one more
    ("obj.ttl ~ 1s", 106, 'expected conditional (==, !=, >, >=, < or <=) got "~"'),
    ("obj.ttl > 1", 106, 'expected duration <n.nn>[ms|s|m|h|d|w|y] got "1"'),
    ("obj.ttl > 1x", 106, 'expected duration <n.nn>[ms|s|m|h|d|w|y] got "1x"'),
    ("obj.ttl > 1.2.3s", 106, 'expected duration <n.nn>[ms|s|m|h|d|w|y] got "1.2.3s"'),
    ("req.url >= a", 106, 'expected conditional (==, !=, ~ or !~) got ">="'),
    ("obj.status > 1", 106, 'expected conditional (==, !=, ~ or !~) got ">"'),
])
def test_ban_errors(expr, status, message):
    with pytest.raises(BanError) as info:
        build(split_args(expr))
    assert (info.value.status, str(info.value)) == (status, message)


# The ban list's bookkeeping (cache_ban.c): which bans an object is tested against, duplicates,
# the lurker, and the tail that no object references any more.
def counters():
    return SimpleNamespace(**{k: 0 for k in (
        "bans", "bans_completed", "bans_added", "bans_req", "bans_obj", "bans_dups", "bans_deleted",
        "bans_tested", "bans_tests_tested", "bans_obj_killed", "bans_lurker_tested",
        "bans_lurker_tests_tested", "bans_lurker_obj_killed")})


def cached(bl, headers=(), **kw):
    oc = obj(headers, **kw)
    oc.ban = None
    bl.move(oc, bl.newest)           # inserted now: it has seen every ban so far
    return oc


def test_a_ban_tests_only_objects_older_than_itself():
    c = counters()
    bl = BanList(c)
    old = cached(bl, [("X-Tag", "a")])
    bl.add("obj.http.x-tag == a")
    new = cached(bl, [("X-Tag", "a")])
    assert bl.check(new, None, NOW) is False and c.bans_tested == 0      # newer than the ban
    assert bl.check(old, None, NOW) is True
    assert (c.bans_tested, c.bans_tests_tested, c.bans_obj_killed) == (1, 1, 1)


def test_an_object_that_survives_moves_to_the_newest_ban():
    c = counters()
    bl = BanList(c)
    oc = cached(bl, [("X-Tag", "b")])
    ban = bl.add("obj.http.x-tag == a")
    assert bl.check(oc, None, NOW) is False
    assert oc.ban is ban and ban.refs == 1
    assert bl.check(oc, None, NOW) is False and c.bans_tested == 1     # nothing newer: not tested


def test_req_bans_wait_for_a_request():
    c = counters()
    bl = BanList(c)
    oc = cached(bl)
    first = oc.ban
    bl.add("req.url ~ .")
    assert bl.check(oc, None, NOW) is False and oc.ban is first          # the lurker cannot move it
    assert bl.check(oc, HttpMessage("GET", "/x"), NOW) is True
    assert (c.bans_req, c.bans_obj) == (1, 0)


def test_duplicate_bans_complete_the_older_one_except_on_ttl_and_age():
    c = counters()
    bl = BanList(c)
    cached(bl)
    a = bl.add("obj.status == 500")
    b = bl.add("obj.status == 500")
    assert a.completed and not b.completed and c.bans_dups == 1
    assert (c.bans, c.bans_completed, c.bans_obj) == (3, 2, 1)
    t1 = bl.add("obj.ttl < 1s")
    bl.add("obj.ttl < 1s")
    assert not t1.completed and c.bans_dups == 1
    off = BanList(counters(), dups=False)
    d = off.add("obj.status == 500")
    off.add("obj.status == 500")
    assert not d.completed


def test_completed_bans_are_not_tested():
    c = counters()
    bl = BanList(c)
    oc = cached(bl, [("X-Tag", "a")])
    bl.add("obj.http.x-tag == a")
    bl.add("obj.http.x-tag == a")            # completes the first
    assert bl.check(oc, None, NOW) is True and c.bans_tests_tested == 1


def test_unreferenced_bans_at_the_tail_are_deleted():
    c = counters()
    bl = BanList(c)
    oc = cached(bl)
    bl.add("obj.status == 404")
    bl.add("obj.status == 410")
    assert len(bl.bans) == 3
    bl.check(oc, None, NOW)                  # survives, moves to the newest ban
    assert len(bl.bans) == 1 and c.bans_deleted == 2 and c.bans == 1
    assert (c.bans_completed, c.bans_obj) == (0, 1)      # the newest is still active
    bl.release(oc)
    assert bl.newest.refs == 0 and len(bl.bans) == 1   # the newest ban always stays


def test_the_lurker_kills_with_old_enough_obj_bans_only():
    c = counters()
    bl = BanList(c)
    hit, miss = cached(bl, [("X-Tag", "a")]), cached(bl, [("X-Tag", "b")])
    ban = bl.add("obj.http.x-tag == a")
    assert bl.lurk([hit, miss], ban.t + 1, min_age=5) == []                # too young
    assert c.bans_lurker_tested == 0
    assert bl.lurk([hit, miss], ban.t + 5, min_age=5) == [hit]
    assert (c.bans_lurker_tested, c.bans_lurker_tests_tested, c.bans_lurker_obj_killed) == (2, 2, 1)
    assert miss.ban is bl.newest and ban.completed


def test_ban_list_shape():
    bl = BanList(counters())
    oc = cached(bl)
    bl.add("obj.status == 500 && obj.http.x-a ~ b")
    lines = bl.listing().split("\n")
    assert lines[0] == "Present bans:" and lines[-1] == ""
    assert re.fullmatch(r"\d+\.\d{6}     0 -  obj.status == 500 && obj.http.x-a ~ b", lines[1])
    assert re.fullmatch(r"\d+\.\d{6}     1 C  ", lines[2])
    assert oc.ban is bl.bans[1]


@pytest.mark.parametrize("seconds, text", [
    (0, "0s"), (1, "1s"), (90, "90s"), (120, "2m"), (3600, "1h"), (86400, "1d"), (604800, "1w"),
    (31536000, "1y"), (6.789, "6.789s"),
    # recorded from varnishd 7.1.1's ban.list: whole milliseconds, truncated
    (1.5, "1.500s"), (1.25, "1.250s"), (100.5, "100.500s"), (0.5, "500ms"), (0.9999, "999ms"), (1.9999, "1.999s"),
    (0.0015, "1ms"), (0.0004, "0s"), (1.0004, "1s"), (1.001, "1s"), (3.14159, "3.141s"), (135, "135s"),
    (5400, "90m"), (604800 * 2, "2w"), (10 ** 10, "10000000000s"),
])
def test_ban_durations_print_in_their_largest_whole_unit(seconds, text):
    from cacheserver.bans import _format_duration
    assert _format_duration(seconds) == text


@pytest.mark.parametrize("expr, args", [
    ("req.url ~ a", ["req.url", "~", "a"]),
    ("  req.url   ==  b  ", ["req.url", "==", "b"]),
    ('req.url == "a b"', ["req.url", "==", "a b"]),
    ('req.url == "a\\"b"', ["req.url", "==", 'a"b']),
    ('req.url == "a\\\\b"', ["req.url", "==", "a\\b"]),
    ('req.url == "\\n\\r\\t"', ["req.url", "==", "\n\r\t"]),
    ('req.url == ""', ["req.url", "==", ""]),
    ('"req.url" == x && obj.status != "200"', ["req.url", "==", "x", "&&", "obj.status", "!=", "200"]),
])
def test_ban_arguments_split_as_the_cli_does(expr, args):
    assert split_args(expr) == args


@pytest.mark.parametrize("expr", ['req.url == "x', 'req.url == "x\\"', '"', 'req.url == "a\\'])
def test_ban_unterminated_quote(expr):
    with pytest.raises(BanError) as info:
        split_args(expr)
    assert (str(info.value), info.value.status) == ("Missing '\"'", 106)


def test_ban_counters():
    c = counters()
    bl = BanList(c)
    assert (c.bans, c.bans_completed) == (1, 1) and len(bl.bans) == 1 and bl.newest.tests == []
    added = c.bans_added                        # the first ban may count as added
    bl.add(["req.url", "~", "x"])                 # arguments as a list, as the CLI passes them
    bl.add("obj.status == 1")
    assert (c.bans, c.bans_added - added, c.bans_req, c.bans_obj) == (3, 2, 1, 1)
    bl.add("req.url ~ x")                       # a duplicate of a req ban completes it
    assert (c.bans, c.bans_added - added, c.bans_req, c.bans_dups, c.bans_completed) == (4, 3, 1, 1, 2)
    bl.add("obj.age > 1s")
    bl.add("obj.age > 1s")
    assert c.bans_dups == 1


def test_ban_header_names():
    t = build(split_args("req.http.X-Foo == 1 && obj.http.a == 2"))
    assert [(x.field, x.header) for x in t] == [("req.http", "x-foo"), ("obj.http", "a")]
    for bad in ("obj.http == 1", "req.httpx.a == 1"):
        with pytest.raises(BanError, match="Unknown or unsupported field"):
            build(split_args(bad))


def test_parse_date_remembers_what_it_parsed_and_stays_bounded():
    """Dates are parsed once (a backend repeats them), the same answer each time, bad ones too, and the
    memory of them never grows past its bound."""
    rfc2616._DATES.clear()
    assert parse_date("Sun, 06 Nov 1994 08:49:37 GMT") == 784111777.0
    assert rfc2616._DATES == {("Sun, 06 Nov 1994 08:49:37 GMT", False): 784111777.0}
    assert parse_date("Sun, 06 Nov 1994 08:49:37 GMT") == 784111777.0
    assert parse_date("not a date") is None and parse_date("not a date") is None
    assert parse_date("") is None and parse_date(None) is None
    # parsed as VTIM_parse: exact case, two-digit day, GMT only
    assert parse_date("sun, 06 Nov 1994 08:49:37 GMT") is None
    assert parse_date("Sun, 6 Nov 1994 08:49:37 GMT") is None
    assert parse_date("Sun, 06 Nov 1994 08:49:37 UTC") is None
    for n in range(3 * rfc2616._DATES_MAX):
        assert parse_date(formatdate(1_000_000 + n, usegmt=True)) == 1_000_000 + n
        assert len(rfc2616._DATES) <= rfc2616._DATES_MAX


def test_ban_regex_error():
    with pytest.raises(BanError) as info:
        build(split_args("req.url ~ ("))
    # varnishd: "Regex compile error: missing closing parenthesis" (PCRE2's words; ours are Python's)
    assert str(info.value).startswith("Regex compile error: ") and info.value.status == 106


def test_ban_list_prints_durations_as_varnishd():
    bl = BanList(counters())
    bl.add("obj.ttl > 120s && obj.grace < 1.5s && obj.keep != 0.5s")
    assert bl.newest.spec == "obj.ttl > 2m && obj.grace < 1.500s && obj.keep != 500ms"   # varnishd 7.1.1


def test_a_completed_ban_lists_without_its_tests():
    """varnishd 7.1.1 drops a completed ban's tests: ban.list shows `C` and nothing after it."""
    bl = BanList(counters())
    cached(bl)
    bl.add("obj.status == 500")
    bl.add("obj.status == 500")
    lines = bl.listing().split("\n")
    assert lines[1].endswith(" -  obj.status == 500") and lines[2].endswith(" C  ") and lines[3].endswith(" C  ")


def test_the_first_ban_counts_as_added():
    c = counters()
    BanList(c)
    assert (c.bans, c.bans_completed, c.bans_added) == (1, 1, 1)       # varnishstat at varnishd 7.1.1's start


def test_ban_counters_accumulate():
    c = counters()
    bl = BanList(c)
    a, b = cached(bl, [("X-Tag", "a")]), cached(bl, [("X-Tag", "a")])
    assert bl.newest.refs == 2
    bl.add("req.url ~ x")
    bl.add("req.url ~ y")
    bl.add("obj.status == 1")
    bl.add("obj.status == 1")
    bl.add("obj.status == 1")
    assert (c.bans_req, c.bans_dups) == (2, 2)
    bl.add("obj.http.x-tag == a && obj.status == 200")
    req = HttpMessage("GET", "/")
    assert bl.check(a, req, NOW) is True and bl.check(b, req, NOW) is True
    # each object: 2 tests of the newest ban, then the killing one is that ban; not the completed dups
    assert (c.bans_tested, c.bans_tests_tested, c.bans_obj_killed) == (2, 4, 2)


def test_trimming_keeps_the_bans_an_object_still_needs():
    c = counters()
    bl = BanList(c)
    first = cached(bl)
    bl.add("obj.status == 1")
    mid = cached(bl)
    bl.add("obj.status == 2")
    bl.add("obj.status == 3")
    bl.release(first)                    # the first ban goes; the one `mid` points at stays
    assert len(bl.bans) == 3 and c.bans == 3 and mid.ban is bl.bans[-1]


def test_a_lookup_skips_req_bans_without_a_request_and_completed_bans():
    c = counters()
    bl = BanList(c)
    oc = cached(bl, [("X-Tag", "a")])
    bl.add("obj.http.x-tag == a")
    bl.add("obj.status == 999")
    bl.add("obj.status == 999")          # completes the one before it
    bl.add("req.url ~ x")
    assert bl.check(oc, None, NOW) is True


def test_an_older_req_ban_does_not_hold_an_object_back():
    c = counters()
    bl = BanList(c)
    bl.add("req.url ~ x")
    oc = cached(bl)
    bl.add("obj.status == 999")
    assert bl.check(oc, None, NOW) is False and oc.ban is bl.newest


# The lurker's times are relative to the bans' own (time.time() at ban), as its min_age is.
def test_the_lurker_goes_on_past_objects_with_nothing_to_test():
    bl = BanList(counters())
    stale = cached(bl, [("X-Tag", "a")])
    ban = bl.add("obj.http.x-tag == a")
    behind_req = cached(bl, [("X-Tag", "a")])      # newer than the obj ban: only the req ban to see
    bl.add("req.url ~ x")
    fresh = cached(bl, [("X-Tag", "a")])            # has seen every ban
    assert bl.lurk([fresh, behind_req, stale], ban.t + 10, min_age=5) == [stale]


def test_the_lurker_tests_only_bans_newer_than_the_object():
    bl = BanList(counters())
    bl.add("obj.http.x-tag == a")
    oc = cached(bl, [("X-Tag", "a")])
    late = bl.add("obj.status == 999")
    assert bl.lurk([oc], late.t + 10, min_age=5) == [] and oc.ban is late


def test_the_lurker_evaluates_ttl_bans_at_its_own_time():
    bl = BanList(counters())
    oc = cached(bl, ttl=100.0, t_origin=0.0)
    ban = bl.add("obj.ttl < 10s")
    oc.t_origin = ban.t - 95              # 5 s left when the lurker runs at ban.t
    assert bl.lurk([oc], ban.t, min_age=0) == [oc]


def test_the_lurker_tests_objects_behind_a_req_ban_and_moves_them_up_to_it():
    # varnishd's lurker tests every object against the due obj bans and moves it to just below the
    # newest pending req ban, no further (tests/vtc/fid_lurker_req_ban.vtc passes on varnishd 7.1)
    c = counters()
    bl = BanList(c)
    oc = cached(bl, [("X-Tag", "b")])
    obj_ban = bl.add("obj.http.x-tag == a")
    req_ban = bl.add("req.url ~ /x")
    assert bl.lurk([oc], req_ban.t + 100, min_age=0) == [] and oc.ban is obj_ban
    assert c.bans_lurker_tested == 1                       # it was tested against the obj ban
    assert obj_ban.completed and not req_ban.completed


def test_the_lurker_never_moves_an_object_past_a_req_ban_it_has_not_seen():
    # the oldest ban newer than the object is a pending req ban: the object is tested against the
    # due obj ban behind it and stays where it is (its next hit must still test the req ban)
    c = counters()
    bl = BanList(c)
    oc = cached(bl, [("X-Tag", "b")])
    first = oc.ban
    req_ban = bl.add("req.url ~ /x")
    obj_ban = bl.add("obj.http.x-tag == a")
    assert bl.lurk([oc], obj_ban.t + 100, min_age=0) == [] and oc.ban is first
    assert c.bans_lurker_tested == 1 and obj_ban.completed and not req_ban.completed


def test_the_lurker_moves_an_object_no_further_than_a_young_ban():
    bl = BanList(counters())
    oc = cached(bl, [("X-Tag", "b")])
    old = bl.add("obj.http.x-tag == a")
    young = bl.add("obj.http.x-tag == c")
    young.t = old.t + 10
    assert bl.lurk([oc], old.t + 5, min_age=5) == [] and oc.ban is old
    assert old.completed and not young.completed          # the object still has to see `young`


def test_the_lurker_never_completes_a_req_ban():
    bl = BanList(counters())
    req_ban = bl.add("req.url ~ /x")
    oc = cached(bl)
    assert bl.lurk([oc], req_ban.t + 100, min_age=0) == [] and not req_ban.completed


def test_the_lurker_completes_due_obj_bans_when_no_object_is_left():
    bl = BanList(counters())
    old = bl.add("obj.status == 1")
    young = bl.add("obj.status == 2")
    young.t = old.t + 10
    assert bl.lurk([], old.t + 5, min_age=5) == []
    assert old.completed and not young.completed
    assert bl.lurk([], young.t + 5, min_age=5) == [] and young.completed


def test_the_lurker_counts_every_object_it_kills():
    c = counters()
    bl = BanList(c)
    objs = [cached(bl, [("X-Tag", "a")]) for _ in range(3)]
    ban = bl.add("obj.http.x-tag == a")
    assert bl.lurk(objs, ban.t + 10, min_age=5) == objs
    assert (c.bans_lurker_tested, c.bans_lurker_obj_killed) == (3, 3)


def test_an_older_req_ban_does_not_hold_an_object_back_from_the_lurker():
    bl = BanList(counters())
    bl.add("req.url ~ x")
    oc = cached(bl)                     # has seen the req ban
    late = bl.add("obj.status == 999")
    assert bl.lurk([oc], late.t + 10, min_age=5) == [] and oc.ban is late


@pytest.mark.parametrize("headers, status, record", [
    # recorded from varnishd 7.1.1 (varnishtest, the VSL TTL records), at now = NOW
    ([("Cache-Control", "max-age=30, stale-while-revalidate=4"), ("Age", "5"), ("Date", http_date(NOW))], 200,
     f"RFC 30 4 0 {NOW:.0f} {NOW - 5:.0f} {NOW:.0f} 0 30 cacheable"),
    ([("Date", http_date(NOW))], 302, f"RFC -1 10 0 {NOW:.0f} {NOW:.0f} {NOW:.0f} 0 0 cacheable"),
    ([("Date", D1990), ("Expires", E1990)], 200, f"RFC 100 10 0 {NOW:.0f} {NOW:.0f} 631152000 631152100 0 cacheable"),
    # a status RFC2616_Ttl does not cache keeps the -1 it starts from (cache_rfc2616.c)
    ([("Cache-Control", "max-age=5")], 500, f"RFC -1 10 0 {NOW:.0f} {NOW:.0f} 0 0 0 cacheable"),
])
def test_the_ttl_record(headers, status, record):
    ctx = Context(method="vcl_backend_response", hash_parts=[])
    ctx.beresp = HttpMessage(status=status, reason="", headers=Headers(headers))
    ctx.log = []
    compute_ttl(ctx, PARAMS, NOW, log=True)
    assert ctx.log == [("TTL", record)]
    ctx.log = []
    compute_ttl(ctx, PARAMS, NOW, log=True, uncacheable=True)     # the record's last field (vsl(7))
    assert ctx.log == [("TTL", record.replace(" cacheable", " uncacheable"))]


LM24, DATE24 = "Mon, 01 Jan 2024 00:00:00 GMT", "Mon, 01 Jan 2024 00:00:30 GMT"
IFRANGE_OBJECTS = {
    "strong": [("ETag", '"abc"'), ("Last-Modified", LM24), ("Date", DATE24)],
    "weak": [("ETag", 'W/"abc"'), ("Last-Modified", LM24), ("Date", DATE24)],
    "lm61": [("Last-Modified", "Mon, 01 Jan 2024 00:01:01 GMT"), ("Date", LM24)],    # 61 s after its Date
    "lm60": [("Last-Modified", "Mon, 01 Jan 2024 00:01:00 GMT"), ("Date", LM24)],
    "nolm": [("Date", LM24)],
}


@pytest.mark.parametrize("obj, if_range, served", [
    # varnishd 7.1.1 (a .vtc: Range: bytes=0-0 with these If-Range against these objects, 206 or 200)
    ("strong", None, True), ("strong", '"abc"', True), ("strong", 'W/"abc"', False), ("strong", '"xyz"', False),
    ("strong", LM24, True), ("strong", "Mon, 01 Jan 2024 00:00:01 GMT", False), ("strong", "garbage", False),
    ("strong", "abc", False), ("weak", '"abc"', False), ("weak", 'W/"abc"', False), ("weak", LM24, True),
    ("lm61", "Mon, 01 Jan 2024 00:01:01 GMT", False), ("lm60", "Mon, 01 Jan 2024 00:01:00 GMT", True),
    ("nolm", LM24, False),
])
def test_if_range(obj, if_range, served):
    req = Headers([("Range", "bytes=0-0")] + ([("If-Range", if_range)] if if_range else []))
    assert if_range_matches(req, Headers(IFRANGE_OBJECTS[obj])) is served


def test_object_last_modified_is_the_header_else_the_second_it_was_made():
    assert object_last_modified(Headers([("Last-Modified", LM24)]), NOW) == 1704067200.0
    assert object_last_modified(Headers([("Last-Modified", "garbage")]), NOW) == 0.0
    assert object_last_modified(Headers([("Date", LM24)]), NOW + 0.75) == NOW          # never the Date
