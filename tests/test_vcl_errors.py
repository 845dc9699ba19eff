"""Bad VCL is rejected at load with VCC's message, file:line:col, the source line and a caret.

Messages and positions were checked against `varnishd -C` (7.1.1); VCC counts a tab as 8 columns,
we report the character column (a tab is one), so VCC's "Pos 13" after one tab is our column 6.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from vcl.compiler import compile_vcl
from vcl.errors import VCLError
from vmods import Param, Vmod

H = "vcl 4.1;\nimport std;\nbackend default none;\n"   # the cases below start on line 4

CASES = {
    "unknown_var": (H + 'sub vcl_recv {\n\tset req.foo = "x";\n}\n', 5, 6, "Symbol not found: 'req.foo'"),
    "unknown_var_read": (H + "sub vcl_recv {\n\tif (req.bar) {}\n}\n", 5, 10, "Unknown property 'bar' for type HTTP"),
    "wrong_type": (H + 'sub vcl_recv {\n\tset req.ttl = "x";\n}\n', 5, 16,
                   "Expression has type STRING, expected DURATION"),
    "not_avail_read": (H + "sub vcl_recv {\n\tset req.http.x = resp.status;\n}\n", 5, 19,
                       "Not available in subroutine 'vcl_recv'."),
    "not_avail_set": (H + 'sub vcl_deliver {\n\tset req.http.x = "1";\n\tset beresp.ttl = 1s;\n}\n', 6, 6,
                      "Cannot be set in subroutine 'vcl_deliver'."),
    "read_only": (H + 'sub vcl_recv {\n\tset req.xid = "1";\n}\n', 5, 6, "Variable is read only."),
    "read_only_proto_41": (H + 'sub vcl_recv {\n\tset req.proto = "HTTP/1.0";\n}\n', 5, 6,
                           "Variable is read only."),
    # bereq.body may be unset, not read or set: varnishd's "cannot be set" (v00018)
    "set_unreadable": (H + 'sub vcl_backend_fetch {\n\tset bereq.body = "foo";\n}\n', 5, 6,
                       "Variable cannot be set."),
    # return actions, as vcc_act_return checks them (v00018)
    "return_missing_arg": (H + "sub vcl_recv {\n\treturn(synth);\n}\n", 5, 14, "Missing argument."),
    "return_empty_args": (H + "sub vcl_recv {\n\treturn(pass());\n}\n", 5, 14,
                          "Unknown token ')' when looking for DURATION"),
    "return_args_not_allowed": (H + "sub vcl_recv {\n\treturn(pipe(XXX);\n}\n", 5, 13, "Arguments not allowed."),
    "return_args_not_allowed2": (H + "sub vcl_recv {\n\treturn(lookup(1));\n}\n", 5, 15,
                                 "Arguments not allowed."),
    "return_too_many_args": (H + 'sub vcl_recv {\n\treturn(synth(1,"a",3));\n}\n', 5, 20, "Expected ')' got ','"),
    "return_vcl_sub": (H + "sub vcl_recv {\n\treturn (vcl(vcl_recv));\n}\n", 5, 14,
                       "Symbol 'vcl_recv' has wrong type (sub), expected vcl:"),
    "vmod_object_method_call": ("vcl 4.1;\nimport directors;\nbackend default none;\n\nsub vcl_recv {\n\tdirectors.round_robin.backend();\n}\n", 6, 2,
                                "Syntax error.While compiling function call:"),
    "instance_as_statement": ("vcl 4.1;\nimport directors;\nbackend default none;\n\nsub vcl_init {\n\tnew rr = directors.round_robin();\n\trr;\n}\n", 7, 4,
                              "Expected '.' got ';'"),
    "ban_bad_token": (H + "sub vcl_recv {\n\tban (<<);\n}\n", 5, 7, "Unknown token '<<' when looking for STRING"),
    "synthetic_bad_token": (H + 'sub vcl_synth {\n\tsynthetic( << "foo";\n}\n', 5, 13,
                            "Unknown token '<<' when looking for STRING"),
    "unset_bad": (H + "sub vcl_recv {\n\tunset req.url;\n}\n", 5, 8, "Variable cannot be unset."),
    "unset_obj_hdr": (H + "sub vcl_deliver {\n\tunset obj.http.x;\n}\n", 5, 8, "Variable cannot be unset."),
    "obj_http_in_deliver": (H + "sub vcl_deliver {\n\tset resp.http.x = obj.http.x;\n}\n", 5, 20,
                            "Not available in subroutine 'vcl_deliver'."),
    "illegal_return": (H + "sub vcl_deliver {\n\treturn (pass);\n}\n", 5, 10, 'Invalid return "pass"'),
    "illegal_return_hit_fetch": (H + "sub vcl_hit {\n\treturn (fetch);\n}\n", 5, 10, 'Invalid return "fetch"'),
    "miss_is_gone_in_71": (H + "sub vcl_hit {\n\treturn (miss);\n}\n", 5, 10, "Expected return action name."),
    "unknown_action": (H + "sub vcl_deliver {\n\treturn (bogus);\n}\n", 5, 10, "Expected return action name."),
    "undefined_sub": (H + "sub vcl_recv {\n\tcall nope;\n}\n", 5, 7, "Undefined sub nope, first reference:"),
    "unused_sub": (H + "sub foo {\n}\n", 4, 5, "Unused sub foo, defined:"),
    "recursion": (H + "sub foo {\n\tcall bar;\n}\nsub bar {\n\tcall foo;\n}\nsub vcl_recv {\n\tcall foo;\n}\n",
                  7, 5, "Subroutine recurses on"),
    "self_recursion": (H + "sub foo {\n\tcall foo;\n}\nsub vcl_recv {\n\tcall foo;\n}\n", 4, 5,
                       "Subroutine recurses on"),
    "unused_backend": ('vcl 4.1;\nbackend a { .host = "127.0.0.1"; }\nbackend b { .host = "127.0.0.2"; }\n',
                       3, 9, "Unused backend b, defined:"),
    "unused_acl": (H + 'acl a {\n\t"1.2.3.4";\n}\n', 4, 5, "Unused acl a, defined:"),
    "unused_probe": (H + 'probe p {\n\t.url = "/";\n}\n', 4, 7, "Unused probe p, defined:"),
    "undefined_acl": (H + "sub vcl_recv {\n\tif (client.ip ~ nope) {}\n}\n", 5, 18,
                      "Undefined acl nope, first reference:"),
    "acl_match_string": (H + 'sub vcl_recv {\n\tif (client.ip ~ "x") {}\n}\n', 5, 18,
                         "Expression has type STRING, expected ACL"),
    "acl_match_int": (H + "sub vcl_recv {\n\tif (client.ip ~ 1) {}\n}\n", 5, 18,
                      "Expression has type INT, expected ACL"),
    "vmod_func_statement_without_parens": (H + "sub vcl_recv {\n\tstd.toupper;\n}\n", 5, 13,
                                           "Expected '(' got ';'"),
    "regsub_two_args": (H + 'sub vcl_recv {\n\tset req.url = regsub(req.url, "a");\n}\n', 5, 35,
                        "Expected ',' got ')'"),
    "regsuball_one_arg": (H + "sub vcl_recv {\n\tset req.url = regsuball(req.url);\n}\n", 5, 33,
                          "Expected ',' got ')'"),
    "object_constructor_in_expr": ("vcl 4.1;\nimport directors;\nbackend default none;\nsub vcl_recv {\n"
                                   "\tset req.http.x = directors.round_robin;\n}\n", 5, 19,
                                   "Symbol 'directors' type (object) can not be used in expression."),
    "positional_after_named": (H + 'sub vcl_recv {\n\tstd.log(s="a", "b");\n}\n', 5, 17,
                               "Expected ')' got '\"b\"'"),
    "unknown_bytes_unit": (H + "sub vcl_recv {\n\tif (std.bytes(\"1\", 1B) > 10 XB) {}\n}\n", 5, 30,
                           "Unknown BYTES unit of measurement ([KMGTP][B])'XB'"),
    "vmod_name_in_expr": (H + "sub vcl_recv {\n\tset req.http.x = std;\n}\n", 5, 19,
                          "Symbol 'std' type (vmod) can not be used in expression."),
    "int_plus_string": (H + 'sub vcl_recv {\n\tif (1 + "a") {}\n}\n', 5, 8, "INT + STRING not possible."),
    "cmp_types": (H + "sub vcl_recv {\n\tif (req.url == 1) {}\n}\n", 5, 14,
                  "Comparison of different types: STRING '==' INT"),
    "bool_and": (H + "sub vcl_recv {\n\tif (1.5 && true) {}\n}\n", 5, 6,
                 "'&&' must be preceeded by BOOL, found REAL."),
    "not_real": (H + "sub vcl_recv {\n\tif (!1.5) {}\n}\n", 5, 6, "'!' must be followed by BOOL, found REAL."),
    "double_not": (H + "sub vcl_recv {\n\tif (!!true) {}\n}\n", 5, 7, "Unknown token '!' when looking for BOOL"),
    "regex_bad": (H + 'sub vcl_recv {\n\tif (req.url ~ "(") {}\n}\n', 5, 16, "Regexp compilation error:"),
    "regex_not_literal": (H + "sub vcl_recv {\n\tif (req.url ~ req.url) {}\n}\n", 5, 16,
                          "Expression has type STRING, expected REGEX"),
    "match_int": (H + 'sub vcl_recv {\n\tif (1 ~ "a") {}\n}\n', 5, 8, "Operator ~ not possible on INT"),
    "synthetic_where": (H + 'sub vcl_deliver {\n\tsynthetic("x");\n}\n', 5, 2,
                        "Not a valid action in subroutine 'vcl_deliver'."),
    "hash_data_where": (H + 'sub vcl_recv {\n\thash_data("x");\n}\n', 5, 2,
                        "Not a valid action in subroutine 'vcl_recv'."),
    "reserved_name": (H + "sub vcl_foo {\n}\n", 4, 5, "The names 'vcl_*' are reserved for subroutines."),
    "sub_redefined": (H + "sub foo {\n}\nsub foo {\n}\nsub vcl_recv {\n\tcall foo;\n}\n", 6, 5,
                      "Subroutine 'foo' redefined"),
    "missing_semicolon": (H + 'sub vcl_recv {\n\tset req.url = "/"\n}\n', 6, 1, "Expected ';' got '}'"),
    "bad_char": (H + 'sub vcl_recv {\n\tset req.url = "/" @;\n}\n', 5, 20, "Syntax error at"),
    "unterminated_string": (H + 'sub vcl_recv {\n\tset req.url = "/;\n}\n', 5, 16, "Unterminated string"),
    "func_unknown": (H + 'sub vcl_recv {\n\tstd.nope("x");\n}\n', 5, 2, "Symbol not found: 'std.nope'"),
    "vmod_unknown": ("vcl 4.1;\nimport nope;\nbackend default none;\n", 2, 8, "Could not find VMOD nope"),
    "vmod_not_imported": (H.replace("import std;\n", "\n") + 'sub vcl_recv {\n\tstd.log("x");\n}\n', 5, 2,
                          "Symbol not found: 'std.log'"),
    "func_void_expr": (H + 'sub vcl_recv {\n\tset req.http.x = std.log("a");\n}\n', 5, 26, "Function returns VOID:"),
    "func_missing_arg": (H + "sub vcl_recv {\n\tset req.http.x = std.strstr(req.url);\n}\n", 5, 37,
                         "Argument 's2' missing"),
    "func_unknown_named_arg": (H + "sub vcl_recv {\n\tset req.http.x = std.integer(s=\"1\", nope=2);\n}\n",
                               5, 38, "Unknown argument 'nope'"),
    "func_wrong_arg_type": (H + 'sub vcl_recv {\n\tset req.http.x = std.port("1.2.3.4::80");\n}\n', 5, 28,
                            "IP constant"),
    "bytes_in_string": (H + "sub vcl_recv {\n\tset req.http.x = 10KB;\n}\n", 5, 21, "Unknown duration unit 'KB'"),
    "int_times_duration": (H + "sub vcl_backend_response {\n\tset beresp.ttl = 3 * 1m;\n}\n", 5, 21,
                           "INT * DURATION not possible."),
    "string_mul": (H + 'sub vcl_recv {\n\tset req.http.x = "a" * 2;\n}\n', 5, 23,
                   "Operator * not possible on type STRING."),
    "string_minus": (H + "sub vcl_recv {\n\tset req.http.x = req.url - 1;\n}\n", 5, 27, "STRING - INT not possible."),
    "bare_return_in_method": (H + "sub vcl_recv {\n\treturn;\n}\n", 5, 8, "Expected '(' got ';'"),
    "synth_needs_int": (H + 'sub vcl_deliver {\n\treturn (synth("a"));\n}\n', 5, 16,
                        "Expression has type STRING, expected INT"),
    "via_sub": (H + 'sub foo {\n\tset resp.http.x = "1";\n}\nsub vcl_recv {\n\tcall foo;\n}\n'
                "sub vcl_deliver {\n\tcall foo;\n}\n", 5, 6, "Cannot be set from subroutine 'vcl_recv'."),
    "new_unknown_object": (H + "sub vcl_init {\n\tnew x = std.foo();\n}\n", 5, 10, "Symbol not found: 'std.foo'"),
    "backend_no_host": ('vcl 4.1;\nbackend default {\n\t.port = "80";\n}\n', 2, 9, "Expected .host or .path."),
    "backend_bad_field": ('vcl 4.1;\nbackend default {\n\t.hots = "a";\n}\n', 3, 3, "Unknown field: 'hots'"),
    "acl_bad_mask": (H + 'acl a {\n\t"10.1.2.3"/8;\n}\nsub vcl_recv {\n\tif (client.ip ~ a) {}\n}\n', 5, 2,
                     "Non-zero bits in masked part, (maybe use 10.0.0.0/8 ?)"),
    "acl_unresolvable": (H + 'acl a {\n\t"no-such-host.invalid";\n}\nsub vcl_recv {\n\tif (client.ip ~ a) {}\n}\n',
                         5, 2, "DNS lookup(no-such-host.invalid)"),
    "ip_constant": (H + 'sub vcl_recv {\n\tif (client.ip == "nonsense..") {}\n}\n', 5, 19,
                    "IP constant '\"nonsense..\"' could not be resolved to an IP address"),
    "backend_unresolvable": ('vcl 4.1;\nbackend default {\n\t.host = "nonexistent.invalid";\n}\n', 3, 10,
                             "Backend host '\"nonexistent.invalid\"' could not be resolved to an IP address:"),
    "backend_bad_port": ('vcl 4.1;\nbackend default {\n\t.host = "127.0.0.1";\n\t.port = "nonexistentport";\n}\n',
                         3, 10, "Backend host '\"127.0.0.1\"' could not be resolved to an IP address:"),
    "backend_port_twice": ('vcl 4.1;\nbackend default {\n\t.host = "127.0.0.1:80";\n\t.port = "81";\n}\n',
                           3, 10, "Backend host '\"127.0.0.1:80\"' could not be resolved to an IP address:"),
    "inline_c_stmt": (H + "sub vcl_recv {\n\tif (req.url) {\n\t\tC{ int x; }C\n\t}\n}\n", 6, 3, "Inline-C not allowed"),
    "inline_c_top": (H + "C{\n#include <stdio.h>\n}C\n", 4, 1, "Inline-C not allowed"),
    "shift_assign": (H + "sub vcl_backend_response {\n\tset beresp.ttl >>= 2;\n}\n", 5, 17, "Expected '=' got '>>'"),
    "real_dot_too_long": (H + "sub vcl_recv {\n\tset req.http.x = 1234567890123.;\n}\n", 5, 19,
                          "Too many digits for real."),
    "assign_op_on_backend": ('vcl 4.1;\nbackend b { .host = "127.0.0.1"; }\nsub vcl_backend_fetch {\n\tset bereq.backend += b;\n}\n',
                             4, 20, "Expected '=' got '+='"),
    "assign_op_on_string": (H + 'sub vcl_recv {\n\tset req.url -= "x";\n}\n', 5, 14, "Expected '=' got '-='"),
    "acl_name_declared_later": ('vcl 4.1;\nsub vcl_recv {\n\tif (client.ip ~ b) {}\n}\nbackend b { .host = "127.0.0.1"; }\n',
                                5, 9, "Name b must have type 'acl'."),
    "acl_name_declared_before": ('vcl 4.1;\nbackend b { .host = "127.0.0.1"; }\nsub vcl_recv {\n\tif (client.ip ~ b) {}\n}\n',
                                 4, 18, "Expression has type BACKEND, expected ACL"),
    "version_bad": ("vcl 5.0;\nbackend default none;\n", 1, 1, "VCL version 5.0 not supported."),
    "vcl_41_only_var_in_40": ("vcl 4.0;\nbackend default none;\nsub vcl_recv {\n\tset req.http.x = local.socket;\n}\n",
                              4, 19, "Symbol not found: 'local.socket'"),
    "header_in_bool_op": (H + "sub vcl_recv {\n\tif (req.http.a || 1.0) {}\n}\n", 5, 20,
                          "'||' must be followed by BOOL, found REAL."),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_error_position_and_message(name):
    src, line, col, message = CASES[name]
    with pytest.raises(VCLError) as info:
        compile_vcl(src, f"{name}.vcl")
    err = info.value
    first = str(err).splitlines()[0]
    assert first.startswith(f"{name}.vcl:{line}:{col}: {message}"), first
    assert (err.filename, err.line, err.col) == (f"{name}.vcl", line, col)


VARNISHD = shutil.which("varnishd") or ("/usr/sbin/varnishd" if os.path.exists("/usr/sbin/varnishd") else None)
_POS = re.compile(r"^(?:At: )?\('(?:[^']*)' Line (\d+) Pos (\d+)\)")
# a few VCC messages end with the position on the same line ("...'XB'('f.vcl' Line 5 Pos 30)")
_GLUED_POS = re.compile(r"^(.+?)\('[^']*' Line (\d+) Pos (\d+)\)$")


def vcc_report(stderr: str, source: str) -> tuple[str, int, int]:
    """(first message line, line, column) of `varnishd -C`'s report; the column counts a tab as one."""
    lines = stderr.splitlines()
    lines = lines[next(i for i, ln in enumerate(lines) if ln.startswith("Message from VCC")) + 1:]
    message = pos = None
    skip_source = False
    for ln in lines:
        m = _POS.match(ln)
        glued = None if m else _GLUED_POS.match(ln)
        if glued:
            message = glued.group(1) if message is None else message
            pos = (int(glued.group(2)), int(glued.group(3))) if pos is None else pos
            skip_source = True
            continue
        if m:
            if pos is None:
                pos = (int(m.group(1)), int(m.group(2)))
            skip_source = True
            continue
        if skip_source:                     # the quoted source line under a position
            skip_source = False
            continue
        if ln.strip() and not re.fullmatch(r"[-#]+", ln) and message is None:
            message = ln
    line, vcc_pos = pos
    col, x = 1, 0                            # VCC's Pos expands tabs to multiples of 8
    for ch in source.split("\n")[line - 1]:
        if x + 1 >= vcc_pos:
            break
        x = (x // 8 + 1) * 8 if ch == "\t" else x + 1
        col += 1
    return message, line, col


def vcc_mismatches(cases: dict[str, tuple[str, int, int, str]]) -> dict[str, tuple[str, int, int]]:
    """The cases (name -> source, line, column, message) whose message, line or column differ from what
    `varnishd -C` reports for them, run live."""
    # varnishd drops privileges before reading the file: a world-readable directory under /tmp.
    with tempfile.TemporaryDirectory(dir="/tmp") as tmp:
        os.chmod(tmp, 0o755)

        def vcc(name: str) -> tuple[str, tuple[str, int, int]]:
            path = Path(tmp) / f"{name}.vcl"
            path.write_text(cases[name][0])
            path.chmod(0o644)
            run = subprocess.run([VARNISHD, "-C", "-f", str(path)], capture_output=True, text=True, timeout=60)
            return name, vcc_report(run.stderr, cases[name][0])

        with ThreadPoolExecutor(4) as pool:
            live = dict(pool.map(vcc, sorted(cases)))
    wrong = {}
    for name, (message, line, col) in live.items():
        _, want_line, want_col, want_message = cases[name]
        if (line, col) != (want_line, want_col) or not message.startswith(want_message.split("\n")[0]):
            wrong[name] = (message, line, col)
    return wrong


@pytest.mark.skipif(VARNISHD is None, reason="varnishd not installed")
def test_every_case_is_what_varnishd_reports():
    """Each case's message, line and column, as `varnishd -C` reports them (not from our output)."""
    assert vcc_mismatches(CASES) == {}


@pytest.mark.parametrize("name", sorted(CASES))
def test_report_quotes_the_line_with_a_caret_under_the_column(name):
    src, line, col, _ = CASES[name]
    with pytest.raises(VCLError) as info:
        compile_vcl(src, f"{name}.vcl")
    lines = str(info.value).splitlines()
    assert lines[1] == src.split("\n")[line - 1]
    caret = lines[2]
    assert caret.index("^") == col - 1
    assert set(caret[: col - 1]) <= {" ", "\t"}


def test_report_is_the_whole_vcc_style_message_with_call_chain():
    src, *_ = CASES["via_sub"]
    with pytest.raises(VCLError) as info:
        compile_vcl(src, "chain.vcl")
    assert str(info.value) == "\n".join([
        "chain.vcl:5:6: Cannot be set from subroutine 'vcl_recv'.",
        '\tset resp.http.x = "1";',
        "\t    ^~~~~~~~~~~",
        'chain.vcl:4:5: ...in subroutine "foo"',
        "sub foo {",
        "    ^~~",
        'chain.vcl:8:7: ...called from "vcl_recv"',
        "\tcall foo;",
        "\t     ^~~",
        'chain.vcl:7:5: ...which is the "vcl_recv" subroutine',
        "sub vcl_recv {",
        "    ^~~~~~~~",
    ])


def test_illegal_return_lists_the_legal_ones():
    src, *_ = CASES["illegal_return"]
    with pytest.raises(VCLError) as info:
        compile_vcl(src, "r.vcl")
    assert str(info.value).splitlines()[-1] == 'Legal returns are: "deliver" "fail" "restart" "synth"'


def test_error_in_included_file_names_that_file(tmp_path):
    (tmp_path / "inc.vcl").write_text("sub vcl_recv {\n\tset req.nope = 1;\n}\n")
    main = tmp_path / "main.vcl"
    main.write_text('vcl 4.1;\nbackend default none;\ninclude "inc.vcl";\n')
    with pytest.raises(VCLError) as info:
        compile_vcl(main.read_text(), str(main))
    assert str(info.value).startswith(f"{tmp_path / 'inc.vcl'}:2:6: Symbol not found: 'req.nope'")
    assert "\tset req.nope = 1;" in str(info.value)


def test_missing_include():
    with pytest.raises(VCLError) as info:
        compile_vcl('vcl 4.1;\nbackend default none;\ninclude "nope.vcl";\n', "/tmp/x/m.vcl")
    assert str(info.value).startswith("/tmp/x/m.vcl:3:1: Cannot read file 'nope.vcl'")


def test_restricted_vmod_function_in_wrong_sub():
    vmod = Vmod("only")

    @vmod.func("recv", "VOID", [], restrict={"vcl_recv"})
    def recv(ctx):
        return None

    src = "vcl 4.1;\nimport only;\nbackend default none;\nsub vcl_backend_fetch {\n\tonly.recv();\n}\n"
    with pytest.raises(VCLError) as info:
        compile_vcl(src, "o.vcl", extra_vmods={"only": vmod})
    assert str(info.value).startswith("o.vcl:5:2: Not available in subroutine 'vcl_backend_fetch'.")


def test_enum_argument_checked():
    vmod = Vmod("e")

    @vmod.func("pick", "STRING", [Param("which", "ENUM", enum=("FIRST", "LAST"))])
    def pick(ctx, which):
        return which

    ok = "vcl 4.1;\nimport e;\nbackend default none;\nsub vcl_recv {\n\tset req.http.x = e.pick(LAST);\n}\n"
    compile_vcl(ok, "e.vcl", extra_vmods={"e": vmod})
    with pytest.raises(VCLError) as info:
        compile_vcl(ok.replace("LAST", "MIDDLE"), "e.vcl", extra_vmods={"e": vmod})
    assert str(info.value).startswith("e.vcl:5:26: Wrong enum value.  Expected one of:")


def test_no_traceback_for_garbage():
    for src in ["}", "sub", "sub vcl_recv {", "backend {", "acl a { 1; }", '"x"', "vcl 4.1; sub vcl_recv { if }",
                "\x00", "sub vcl_recv { set req.http.x = ((((((1; }"]:
        with pytest.raises(VCLError) as info:
            compile_vcl(src, "g.vcl")
        assert str(info.value).startswith("g.vcl:")


def test_restrict_groups_client_backend():
    vmod = Vmod("grp")

    @vmod.func("front", "VOID", [], restrict={"client"})
    def front(ctx):
        return None

    ok = "vcl 4.1;\nimport grp;\nbackend default none;\nsub vcl_deliver {\n\tgrp.front();\n}\n"
    compile_vcl(ok, "g.vcl", extra_vmods={"grp": vmod})
    with pytest.raises(VCLError) as info:
        compile_vcl(ok.replace("vcl_deliver", "vcl_backend_response"), "g.vcl", extra_vmods={"grp": vmod})
    assert str(info.value).startswith("g.vcl:5:2: Not available in subroutine 'vcl_backend_response'.")


def test_unresolvable_backend_report_has_the_resolver_reason_and_the_backend():
    """As VCC: the gai_strerror text, its apology, and where the backend declaration starts."""
    src, *_ = CASES["backend_unresolvable"]
    with pytest.raises(VCLError) as info:
        compile_vcl(src, "b.vcl")
    lines = str(info.value).splitlines()
    assert lines[3:5] == ["\tName or service not known", "(Sorry if that error message is gibberish.)"]
    assert lines[5] == "b.vcl:2:1: In backend specification starting at:"


def test_backend_connects_to_the_address_vcc_resolved():
    vcl = compile_vcl('vcl 4.1;\nbackend b { .host = "localhost"; .port = "8080"; }\n'
                      'backend c { .host = "[::1] 81"; }\n'
                      "sub vcl_recv { set req.backend_hint = b; set req.backend_hint = c; }", "t.vcl")
    assert (vcl.backends["b"].host, vcl.backends["b"].port, vcl.backends["b"].host_header) == (
        "127.0.0.1", "8080", "localhost")
    assert (vcl.backends["c"].host, vcl.backends["c"].port) == ("::1", "81")


def test_inline_c_allowed_by_the_parameter_is_still_refused_saying_why():
    src, *_ = CASES["inline_c_stmt"]
    with pytest.raises(VCLError) as info:
        compile_vcl(src, "c.vcl", allow_inline_c=True)
    assert str(info.value).startswith("c.vcl:6:3: Inline-C cannot run here: vcc_allow_inline_c is on")


def test_inline_c_of_comments_only_compiles_when_allowed_and_does_nothing():
    src = (H + "C{ /* top */ }C\nsub vcl_recv {\n\tC{\n\t\t// nothing\n\t}C\n"
           "\tif (req.url) {\n\t\tC{ }C\n\t} else {\n\t\tC{ /* a */ /* b */ }C\n\t}\n\tset req.http.x = \"1\";\n}\n")
    vcl = compile_vcl(src, "c.vcl", allow_inline_c=True)
    assert "vcl_recv" in vcl.subs
    with pytest.raises(VCLError, match="Inline-C not allowed"):
        compile_vcl(src, "c.vcl")            # off, even an empty block is refused, as VCC does
    code_after = src.replace("C{ /* a */ /* b */ }C", "C{ /* a */ x = 1; }C")
    with pytest.raises(VCLError, match=r"c\.vcl:12:3: Inline-C cannot run here"):
        compile_vcl(code_after, "c.vcl", allow_inline_c=True)
