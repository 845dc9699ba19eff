"""VCL's number-to-string rules, as properties over many values (hypothesis).

varnishd 7.1.1's rules (vrt.c): an INT in string context is printed "%jd" and fails the task beyond
VRT_INTEGER_MAX (999999999999999); a REAL or DURATION is printed "%.3f" and fails beyond
VRT_DECIMAL_MAX (999999999999.999); BYTES print whole. Checked through compiled VCL, once compiled.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path

import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from real_varnishtest import VARNISHTEST, run_varnishtest

from vcl.compiler import compile_vcl
from vcl.runtime import IP, Context, Headers, HttpMessage, VCLFailure

VCL = compile_vcl("""vcl 4.1;
import std;
backend default none;
sub vcl_recv {
	if (req.http.int) {
		set req.http.out = std.integer(req.http.int) + 0;
	}
	if (req.http.real) {
		set req.http.out = std.real(req.http.real) * 1;
	}
	if (req.http.dur) {
		set req.http.out = std.duration(req.http.dur + "s") + 0s;
	}
	return (synth(200));
}
""", "conv.vcl")


def run(**headers) -> str:
    req = HttpMessage("GET", "/", "HTTP/1.1", headers=Headers(list(headers.items())))
    ctx = Context(method="vcl_recv", req=req, req_top=req, client_ip=IP("1.2.3.4", 1),
                  server_ip=IP("127.0.0.1", 80), remote_ip=IP("1.2.3.4", 1), local_ip=IP("127.0.0.1", 80),
                  xid=1, hash_parts=[], req_time=0.0)
    VCL.subs["vcl_recv"](ctx)
    return ctx.req.headers.get("out")


@given(st.integers(-999999999999999, 999999999999999))
def test_int_prints_in_full(n):
    assert run(int=str(n)) == "%d" % n


@given(st.integers(10 ** 15, 10 ** 17) | st.integers(-(10 ** 17), -(10 ** 15)))
def test_int_beyond_vrt_integer_max_fails(n):
    with pytest.raises(VCLFailure):
        run(int=str(n))


@given(st.decimals(min_value=-999999999999, max_value=999999999999, places=3, allow_nan=False))
def test_real_and_duration_print_three_decimals(d):
    assert run(real=str(d)) == "%.3f" % float(str(d))
    assert run(dur=str(d)) == "%.3f" % float(str(d))


@given(st.floats(min_value=1e12, max_value=1e14))
def test_real_beyond_vrt_decimal_max_fails(x):
    with pytest.raises(VCLFailure):
        run(real="%.3f" % x)


# ------------------------------------------------------------------ strings to numbers (std, VNUM)

STD = compile_vcl("""vcl 4.1;
import std;
backend default none;
sub vcl_recv {
	set req.http.int = std.integer(req.http.s, -4242);
	set req.http.real = std.real(req.http.s, -4242.0);
	set req.http.dur = std.duration(req.http.s, -4242s);
	set req.http.bytes = std.bytes(req.http.s, 4242B);
}
""", "std_conv.vcl")

FALLBACK = {"int": "-4242", "real": "-4242.000", "dur": "-4242.000", "bytes": "4242"}


def std_values(s: str) -> dict[str, str]:
    """What std.integer/real/duration/bytes make of `s` (their fallbacks when they refuse it)."""
    req = HttpMessage("GET", "/", "HTTP/1.1", headers=Headers([("s", s)]))
    STD.subs["vcl_recv"](Context(method="vcl_recv", req=req, vcl=STD))
    return {k: req.headers.get(k) for k in FALLBACK}


OWS = st.sampled_from(["", " ", "  ", "\t"])


@settings(max_examples=40)
@given(OWS, st.integers(-999999999999999, 999999999999999), OWS)
def test_integer_strings_read_back_with_whitespace_around(before, n, after):
    """VNUM reads an sf-integer of up to 15 digits with optional whitespace (space, tab) around it."""
    assert std_values(f"{before}{n}{after}")["int"] == str(n)


@settings(max_examples=40)
@given(st.integers(0, 999999999), st.text("0123456789", min_size=1, max_size=6))
def test_real_strings_keep_three_decimals_truncated(n, digits):
    """std.real reads at most three decimals and ignores the rest (no rounding): "1.2349" is 1.234."""
    assert std_values(f"{n}.{digits}")["real"] == f"{n}.{(digits + '000')[:3]}"


@settings(max_examples=40)
@given(st.integers(0, 999999999), st.text("0123456789", min_size=1, max_size=3).filter(lambda d: d.strip("0")))
def test_integer_refuses_a_fraction(n, digits):
    """std.integer takes "12.0" as 12 but "12.5" is no integer: the fallback."""
    assert std_values(f"{n}.{digits}")["int"] == "-4242"
    assert std_values(f"{n}.000")["int"] == str(n)


DURATION_SCALE = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800, "y": 31536000}


@settings(max_examples=40)
@given(st.integers(0, 9999), st.sampled_from(sorted(DURATION_SCALE)), OWS)
def test_duration_strings_need_a_unit(n, unit, space):
    assert std_values(f"{n}{space}{unit}")["dur"] == "%.3f" % (n * DURATION_SCALE[unit])
    assert std_values(str(n))["dur"] == "-4242.000"        # no unit: not a duration


@settings(max_examples=40)
@given(st.integers(0, 900), st.sampled_from(["", "b", "B", "k", "KB", "kb", "m", "MB", "g", "GB", "t", "TB"]))
def test_bytes_strings_scale_by_1024(n, unit):
    """A unit k, m, g, t (any case, an optional trailing b) scales by powers of 1024; b alone is bytes."""
    power = {"k": 1, "m": 2, "g": 3, "t": 4}.get(unit[:1].lower(), 0)
    assert std_values(f"{n}{unit}")["bytes"] == str(n * 1024 ** power)


# The same four conversions of strings drawn from the characters VNUM reads, asked of varnishd itself.
NUMBERISH = st.tuples(OWS, st.text(" -.0123456789", max_size=7),
                      st.sampled_from(["", "s", "ms", "m", "d", "k", "KB", "b", "e3", "+", " x"]))


@pytest.mark.skipif(VARNISHTEST is None, reason="varnishtest not installed")
@settings(max_examples=1, deadline=None, derandomize=True, phases=[Phase.generate],
          suppress_health_check=list(HealthCheck))
@given(st.lists(NUMBERISH.map("".join), min_size=80, max_size=80, unique=True))
def test_std_conversions_of_number_like_strings_agree_with_varnishd(strings):
    strings = [s for s in strings if s.strip()] + ["1.2349", " 12 ", "12.0", "-0", "-0s", "-0.0", "-.0", ".5", "1e3", "+1", "1.5k"]
    assert {s: std_values(s) for s in strings} == varnishd_std_values(strings)


def varnishd_std_values(strings: list[str]) -> dict[str, dict[str, str]]:
    """std.integer/real/duration/bytes of each string, as varnishd 7.1 answers in one varnishtest run
    (a request per string: a response holds at most http_max_hdr headers)."""
    calls = " + \"|\" + ".join(f'std.{f}({{"{{s}}"}}, {fb})' for f, fb in
                                (("integer", "-4242"), ("real", "-4242.0"), ("duration", "-4242s"), ("bytes", "4242B")))
    subs = "\n".join(f'\t\tif (req.url == "/{i}") {{ set resp.http.v = {calls.replace("{s}", s)}; }}'
                     for i, s in enumerate(strings))
    requests = "".join(f"\ttxreq -url /{i}\n\trxresp\n" for i in range(len(strings)))
    vtc = ('varnishtest "std conversions"\nvarnish v1 -vcl {\n\timport std;\n\tbackend default none;\n'
           '\tsub vcl_recv { return (synth(200)); }\n\tsub vcl_synth {\n' + subs +
           '\n\t}\n} -start\nclient c1 {\n' + requests + '} -run\n')
    # the same varnishtest binary gives the same answers to the same text: kept between runs (~10 s each)
    st_ = os.stat(VARNISHTEST)
    key = hashlib.sha256(f"{os.path.realpath(VARNISHTEST)}:{st_.st_size}:{st_.st_mtime_ns}\n{vtc}".encode()).hexdigest()
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "cacheserver-tests" / f"std-{key}.json"
    try:
        answers = json.loads(cache.read_text())
    except (OSError, ValueError):
        out = run_varnishtest(vtc, "conv")
        answers = re.findall(r"c1 +rxhdr\|v: (.*?)\\r$", out, re.M)
        assert len(answers) == len(strings), out[-6000:]
        try:
            cache.parent.mkdir(parents=True, exist_ok=True)
            cache.write_text(json.dumps(answers))
        except OSError:
            pass
    return {s: dict(zip(FALLBACK, answer.split("|"), strict=True)) for s, answer in zip(strings, answers, strict=True)}
