"""vmod std (7.1): conversions, querysort, fnmatch, dates and the rest, against answers recorded from
varnishd 7.1.1 (each expression set as a response header in vcl_synth, as in a .vtc)."""

from __future__ import annotations

import math

import pytest

from vcl.compiler import compile_vcl
from vcl.runtime import IP, Context, HttpMessage, VCLFailure
from vmods import vnum

RECORDED = [
    ('std.querysort("/p?a=12&a=1&b")', '/p?a=12&a=1&b'),
    ('std.querysort("/p?b")', '/p?b'),
    ('std.querysort("/?&")', '/?'),
    ('std.querysort("/p?c&b&")', '/p?b&c'),
    ('std.querysort("/p?b=é&b=a&B=z")', '/p?B=z&b=é&b=a'),
    ('std.querysort("/p?&&")', '/p?'),
    ('std.querysort("/p?x=2&x=10&x")', '/p?x=10&x=2&x'),
    ('std.integer(" 12 ", 0)', '12'),
    ('std.integer("12.0", 0)', '12'),
    ('std.integer("12.5", 0)', '0'),
    ('std.integer("+1", 7)', '7'),
    ('std.integer("1e3", 7)', '7'),
    ('std.integer("9999999999999999", 7)', '7'),
    ('std.integer("-0", 7)', '0'),
    ('std.integer(".5", 7)', '7'),
    ('std.integer(real=999999999999.0 * 1000000.0, fallback=3)', '3'),
    ('std.integer(duration=2.9s)', '2'),
    ('std.integer(time=std.time("2000-01-01T00:00:00"))', '946684800'),
    ('std.real("12.", 0.5)', '12.000'),
    ('std.real(".5", 0.5)', '0.500'),
    ('std.real("-.5", 0.5)', '-0.500'),
    ('std.real("1.23456", 0.5)', '1.234'),
    ('std.real("1 .5", 0.5)', '1.500'),
    ('std.real("1234567890123", 0.5)', '0.500'),
    ('std.real("123456789012.5", 0.5)', '123456789012.500'),
    ('std.real("5 ", 0.5)', '5.000'),
    ('std.real("", 0.5)', '0.500'),
    ('std.duration("1.5m", 0s)', '90.000'),
    ('std.duration("10", 1s)', '1.000'),
    ('std.duration(" 3 ms ", 1s)', '0.003'),
    ('std.duration("-2h", 1s)', '-7200.000'),
    ('std.duration("1mm", 1s)', '1.000'),
    ('std.duration("2.0005s", 1s)', '2.000'),
    ('std.bytes("1.5k", 1B)', '1536'),
    ('std.bytes("1.5", 1B)', '1'),
    ('std.bytes("10 MB", 1B)', '10485760'),
    ('std.bytes("3kb", 1B)', '3072'),
    ('std.bytes("1.3B", 1B)', '1'),
    ('std.bytes("-1", 1B)', '1'),
    ('std.bytes("1x", 1B)', '1'),
    ('std.bytes(real=2.7)', '2'),
    ('std.bytes(integer=-1, fallback=5B)', '5'),
    ('std.time("Sun, 06 Nov 1994 08:49:37 GMT", now)', 'Sun, 06 Nov 1994 08:49:37 GMT'),
    ('std.time("Sunday, 06-Nov-94 08:49:37 GMT", now)', 'Sun, 06 Nov 1994 08:49:37 GMT'),
    ('std.time("Sun Nov  6 08:49:37 1994", now)', 'Sun, 06 Nov 1994 08:49:37 GMT'),
    ('std.time("1994-11-06T08:49:37", now)', 'Sun, 06 Nov 1994 08:49:37 GMT'),
    ('std.time("Mon, 06 Nov 1994 08:49:37 GMT", std.real2time(1, now))', 'Thu, 01 Jan 1970 00:00:01 GMT'),
    ('std.time("12345.5", now)', 'Thu, 01 Jan 1970 03:25:45 GMT'),
    ('std.time("0", std.real2time(7, now))', 'Thu, 01 Jan 1970 00:00:07 GMT'),
    ('std.time(" 1994-11-06T08:49:37  ", now)', 'Sun, 06 Nov 1994 08:49:37 GMT'),
    ('std.real2integer(2.5, 0)', '3'),
    ('std.real2integer(-2.5, 0)', '-3'),
    ('std.real2integer(999999999999.0 * 100.0, 9)', '9'),
    ('std.time2integer(std.real2time(3.5, now), 0)', '4'),
    ('std.fnmatch("*.[ch]", "a.c")', 'true'),
    ('std.fnmatch("a/*", "a/b/c")', 'false'),
    ('std.fnmatch("a/*", "a/b/c", pathname=false)', 'true'),
    ('std.fnmatch("*", ".x", period=true)', 'false'),
    ('std.fnmatch("\\\\*", "*")', 'false'),
    ('std.fnmatch("[!a]x", "bx")', 'true'),
    ('std.strstr("foobar", "ob")', 'obar'),
    ('std.round(2.5)', '3.000'),
    ('std.round(-0.5)', '-1.000'),
    ('std.strftime(std.real2time(86400, now), "%Y-%m-%d %H:%M")', '1970-01-02 00:00'),
]


def _synth(body: str) -> Context:
    vcl = compile_vcl("vcl 4.1;\nimport std;\nbackend b none;\nsub vcl_synth {\n%s\n}\n" % body, "t.vcl")
    req = HttpMessage("GET", "/")
    ctx = Context(method="vcl_synth", req=req, req_top=req, resp=HttpMessage(status=200), vcl=vcl, now=1000.0,
                  client_ip=IP("192.0.2.1", 1234))
    vcl.subs["vcl_synth"](ctx)
    return ctx


def test_answers_recorded_from_varnishd():
    ctx = _synth("\n".join(f"set resp.http.x{i} = {expr};" for i, (expr, _) in enumerate(RECORDED)))
    got = [(expr, ctx.resp.headers.get(f"x{i}")) for i, (expr, _) in enumerate(RECORDED)]
    assert got == RECORDED


@pytest.mark.parametrize("expr, message", [
    ("std.integer()", "std.integer: not enough arguments"),
    ('std.real("1", integer=1)', "std.real: too many arguments"),
    ('std.integer("x")', "std.integer: conversion failed: Invalid number"),
    ('std.integer("9999999999999999")', "std.integer: conversion failed: Too many digits"),
    ('std.real("NAN")', "std.real: conversion failed: Invalid number"),
    ("std.real(req.http.unset)", "std.real: conversion failed"),
    ('std.duration("1")', "std.duration: conversion failed"),
    ('std.bytes("1.5")', "std.bytes: conversion failed"),
    ('std.time("Thu, 01 Jan 1970 00:00:00 GMT")', "std.time: conversion failed"),   # 0 is "no date"
    ('std.ip("not an address", resolve=false)', "std.ip: conversion failed"),
    ("std.fnmatch(req.http.unset, \"x\")", "std.fnmatch(): pattern is NULL"),
    ("std.fnmatch(\"x\", req.http.unset)", "std.fnmatch(): subject is NULL"),
])
def test_conversion_failures_fail_the_task_with_varnishds_message(expr, message):
    with pytest.raises(VCLFailure) as info:
        _synth(f"set resp.http.x = {expr};")
    assert str(info.value) == message


def test_fallbacks_and_unset_strings():
    ctx = _synth('set resp.http.a = std.integer(req.http.unset, 5);\n'
                 'set resp.http.b = std.ip(req.http.unset, client.ip);\n'
                 'set resp.http.c = std.time(req.http.unset, std.real2time(5, now));\n'
                 'set resp.http.d = std.bytes(req.http.unset, 3KB);')
    h = ctx.resp.headers
    assert (h.get("a"), h.get("b"), h.get("c"), h.get("d")) == \
        ("5", "192.0.2.1", "Thu, 01 Jan 1970 00:00:05 GMT", "3072")


def test_vnum_parsers_follow_vnum_c():
    # vnum.c's own test vectors (NUM_C_TEST), non-strict and strict
    assert vnum.parse_number(" -0.123456 ") == (pytest.approx(-0.123), 11)
    assert vnum.parse_number(" .123456 ") == (pytest.approx(0.123), 9)
    with pytest.raises(vnum.NumError, match="Too many digits"):
        vnum.parse_number(" 123456789012.1234 ", strict=True)
    with pytest.raises(vnum.NumError, match="Invalid number"):
        vnum.parse_number(" - ")
    assert vnum.to_bytes("1.3kB") == 1331 and vnum.to_bytes("1.7\tTB") == 1869169767219
    assert vnum.to_bytes("1P\t") == 1125899906842624
    for bad, err in (("1.3B", vnum.ERR_FRACTIONAL_BYTES), ("3*", vnum.ERR_UNKNOWN_BYTES), ("-1", vnum.ERR_INVALID),
                     ("1125899906842624", vnum.ERR_FATNUM)):
        with pytest.raises(vnum.NumError) as info:
            vnum.to_bytes(bad)
        assert str(info.value) == err
    assert vnum.duration(" 365.24219d ") == 31556908.8
    assert math.isnan(vnum.vnum("N12.34e-3")) and vnum.vnum(" 12.") == 12.0


def test_http_dates():
    assert vnum.parse_http_date("Sun, 06 Nov 1994 08:49:37 GMT") == 784111777.0
    assert vnum.parse_http_date("Sunday, 06-Nov-94 08:49:37 GMT") == 784111777.0
    assert vnum.parse_http_date("Sun Nov  6 08:49:37 1994") == 784111777.0
    assert vnum.parse_http_date("1994-11-06T08:49:37") == 784111777.0
    assert vnum.parse_http_date("Mon, 06 Nov 1994 08:49:37 GMT") == 0.0       # wrong weekday
    assert vnum.parse_http_date("Tue, 29 Feb 2022 00:00:00 GMT") == 0.0       # no such day
    assert vnum.parse_http_date("Thu, 01 Jan 1970 00:00:60 GMT") == 59.0      # leap second


def test_set_ip_tos_sets_the_client_socket_option():
    import socket

    class _Transport:
        def __init__(self, sock):
            self.sock = sock

        def get_extra_info(self, name):
            return self.sock

    class _Session:
        def __init__(self, sock):
            self.transport = _Transport(sock)

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        vcl = compile_vcl("vcl 4.1;\nimport std;\nbackend b none;\nsub vcl_recv { std.set_ip_tos(32); }\n", "t.vcl")
        vcl.subs["vcl_recv"](Context(method="vcl_recv", req=HttpMessage("GET", "/"), session=_Session(sock)))
        assert sock.getsockopt(socket.IPPROTO_IP, socket.IP_TOS) == 32
