"""Expression checks (vcl/exprcheck.py) the mutation run and coverage found without a test: the type
errors of operators, literals and vmod arguments. Each message and position is varnishd 7.1's, and the
last test asks `varnishd -C` again (it skips without varnishd).
"""

from __future__ import annotations

import os
import subprocess
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from test_vcl_errors import VARNISHD, vcc_report

from vcl.compiler import compile_vcl
from vcl.errors import VCLError
from vcl.runtime import Context, HttpMessage

H = "vcl 4.1;\nimport std;\nimport directors;\nbackend default none;\n"   # the cases start on line 5


def case(stmt: str) -> str:
    return H + "sub vcl_recv {\n\t" + stmt + "\n}\n"


# name -> (source, line, column, message): as `varnishd -C` 7.1.1 reports them
CASES = {
    "match_on_duration": (case('if (req.ttl ~ "x") {}'), 6, 14, "Operator ~ not possible on DURATION"),
    "modulo_on_real": (case("set req.http.x = 5.0 % 2;"), 6, 23, "Operator % only possible on INT."),
    "minus_on_strings": (case('set req.http.x = "a" - "b";'), 6, 23, "STRING - STRING not possible."),
    "ip_literal_bad": (case('if (client.ip == "not an ip") {}'), 6, 19,
                       "IP constant '\"not an ip\"' could not be resolved to an IP address"),
    "regsub_regex_not_literal": (case('set req.http.x = regsub(req.url, req.url, "b");'), 6, 35,
                                 "Expression has type STRING, expected REGEX"),
    "unknown_function": (case("set req.http.x = nosuch(1);"), 6, 19, "Symbol not found: 'nosuch'"),
    "argument_twice": (case('set req.http.x = std.toupper(s="a", s="b");'), 6, 38, "Argument 's' already used"),
    "argument_missing": (case("set req.http.x = std.toupper();"), 6, 31, "Argument 's' missing"),
    "collect_not_a_header": (case("std.collect(req.url);"), 6, 14, "Expression has type STRING, expected HEADER"),
    "rollback_not_http": (case("std.rollback(foo);"), 6, 15, "Symbol not found: 'foo'"),
    "blob_not_in_recv": (case("set req.http.x = req.hash;"), 6, 19, "Not available in subroutine 'vcl_recv'."),
    "undefined_backend": (case("set req.backend_hint = nosuch;"), 6, 25, "Undefined backend nosuch, first reference:"),
    "too_many_args": (case('set req.http.x = std.toupper("a", "b");'), 6, 36, "Expected ')' got '\"b\"'"),
    "int_times_duration": (case("set req.ttl = 2 * 1s;"), 6, 18, "INT * DURATION not possible."),
    "bool_compare_order": (case("if (true < false) {}"), 6, 11, "Operator < not possible on BOOL"),
    "duration_times_duration": (case("set req.ttl = 1s * 2s;"), 6, 19, "DURATION * DURATION not possible."),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_expression_error(name):
    src, line, col, message = CASES[name]
    with pytest.raises(VCLError) as info:
        compile_vcl(src, f"{name}.vcl")
    err = info.value
    assert str(err).splitlines()[0].startswith(f"{name}.vcl:{line}:{col}: {message}")
    assert (err.line, err.col) == (line, col)


@pytest.mark.parametrize("expr, value", [
    ("5 % 3", "2"), ("-7 % 3", "-1"), ("7 - 10", "-3"), ("2 * 3 + 4", "10"), ("-(3)", "-3"),
    ("10 / 4", "2"), ("10.0 / 4", "2.500"), ("1s * 2", "2.000"), ('1 + "a"', "1a"),
])
def test_arithmetic_values(expr, value):
    """INT arithmetic is C's (% and / truncate toward zero), REAL and DURATION print three decimals."""
    compiled = compile_vcl(case(f"set req.http.x = {expr};"), "arith.vcl")
    req = HttpMessage("GET", "/")
    ctx = Context(method="vcl_recv", req=req, vcl=compiled)
    compiled.subs["vcl_recv"](ctx)
    assert req.headers.get("x") == value


@pytest.mark.skipif(VARNISHD is None, reason="varnishd not installed")
def test_every_case_is_what_varnishd_reports():
    with tempfile.TemporaryDirectory(dir="/tmp") as tmp:
        os.chmod(tmp, 0o755)

        def vcc(name: str):
            path = Path(tmp) / f"{name}.vcl"
            path.write_text(CASES[name][0])
            path.chmod(0o644)
            run = subprocess.run([VARNISHD, "-C", "-f", str(path)], capture_output=True, text=True, timeout=60)
            return name, vcc_report(run.stderr, CASES[name][0])

        with ThreadPoolExecutor(4) as pool:
            live = dict(pool.map(vcc, sorted(CASES)))
    wrong = {name: got for name, got in live.items()
             if (got[1], got[2]) != CASES[name][1:3] or not got[0].startswith(CASES[name][3])}
    assert wrong == {}
