"""std conversions by their typed arguments (vmod_std 7.1: `std.real(bool=true)` is 1.0, and so on),
the paths the mutation run found without a test. Values as VCL prints them (REAL/DURATION: 3 decimals).
"""

from __future__ import annotations

import pytest

from vcl.compiler import compile_vcl
from vcl.runtime import Context, HttpMessage, VCLFailure


def value(expr: str) -> str | None:
    src = f"vcl 4.1;\nimport std;\nbackend default none;\nsub vcl_recv {{\n\tset req.http.x = {expr};\n}}\n"
    compiled = compile_vcl(src, "std.vcl")
    req = HttpMessage("GET", "/")
    action = compiled.subs["vcl_recv"](Context(method="vcl_recv", req=req, vcl=compiled))
    if action.name == "fail":
        raise VCLFailure("failed")
    return req.headers.get("x")


@pytest.mark.parametrize("expr, want", [
    ("std.real(bool=true)", "1.000"), ("std.real(bool=false)", "0.000"), ("std.real(integer=3)", "3.000"),
    ("std.real(bytes=1KB)", "1024.000"), ("std.real(duration=1.5s)", "1.500"),
    ("std.real(time=std.time(integer=12))", "12.000"), ("std.real(s=\"2.5\")", "2.500"),
    ("std.real(s=\"x\", fallback=7.25)", "7.250"),
    ("std.duration(real=1.5)", "1.500"), ("std.duration(integer=2)", "2.000"),
    ("std.duration(s=\"3m\")", "180.000"), ("std.duration(s=\"x\", fallback=4s)", "4.000"),
    ("std.bytes(real=1.9)", "1"), ("std.bytes(integer=5)", "5"), ("std.bytes(s=\"2k\")", "2048"),
    ("std.bytes(real=-1, fallback=9B)", "9"), ("std.bytes(integer=-1, fallback=8B)", "8"),
    ("std.integer(bool=true)", "1"), ("std.integer(real=2.9)", "2"), ("std.integer(real=-2.9)", "-2"),
    ("std.time(real=86400.5)", "Fri, 02 Jan 1970 00:00:00 GMT"),
    ("std.time(s=\"x\", fallback=std.time(integer=60))", "Thu, 01 Jan 1970 00:01:00 GMT"),
    ("std.time(s=\"120\")", "Thu, 01 Jan 1970 00:02:00 GMT"),
    ("std.time(s=\"-5\", fallback=std.time(integer=1))", "Thu, 01 Jan 1970 00:00:01 GMT"),
    ("std.real2integer(2.5, 0)", "3"), ("std.real2integer(std.real(integer=999999999999999), 7)", "7"),
    ("std.time2integer(std.time(real=10.4), 0)", "10"),
    ("std.real2time(5.0, std.time(integer=1))", "Thu, 01 Jan 1970 00:00:05 GMT"),
    ("std.time2real(std.time(integer=3), 0.0)", "3.000"),
    ("std.strftime(std.time(integer=0), \"%Y-%m-%d\")", "1970-01-01"),
    # "-0" is -0.0, and C prints it with its sign (varnishd 7.1.1)
    ("std.real(\"-0\")", "-0.000"), ("std.real(\"-.0\")", "-0.000"), ("std.duration(\"-0s\")", "-0.000"),
    ("std.integer(\"-0\")", "0"),
])
def test_conversion(expr, want):
    assert value(expr) == want


@pytest.mark.parametrize("expr", ["std.duration(s=\"x\")", "std.bytes(s=\"x\")", "std.time(s=\"x\")",
                                  "std.real(s=\"x\")", "std.ip(\"not an ip\", resolve=false)"])
def test_conversion_without_fallback_fails(expr):
    with pytest.raises(VCLFailure):
        value(expr)
