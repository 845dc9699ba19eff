"""VCL's number-to-string rules, as properties over many values (hypothesis).

varnishd 7.1.1's rules (vrt.c): an INT in string context is printed "%jd" and fails the task beyond
VRT_INTEGER_MAX (999999999999999); a REAL or DURATION is printed "%.3f" and fails beyond
VRT_DECIMAL_MAX (999999999999.999); BYTES print whole. Checked through compiled VCL, once compiled.
"""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

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
