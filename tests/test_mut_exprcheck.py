"""Expression checks (vcl/exprcheck.py) the mutation run and coverage found without a test: the type
errors of operators, literals and vmod arguments. Each message and position is varnishd 7.1's, and the
last test asks `varnishd -C` again (it skips without varnishd).
"""

from __future__ import annotations

import os
import re
import subprocess
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from test_vcl_errors import VARNISHD, vcc_mismatches

from vcl.compiler import compile_vcl
from vcl.errors import VCLError
from vcl.runtime import Context, HttpMessage

H = "vcl 4.1;\nimport std;\nimport directors;\nbackend default none;\n"   # the cases start on line 5


def case(stmt: str) -> str:
    return H + "sub vcl_recv {\n\t" + stmt + "\n}\n"


BLOB = "vcl 4.1;\nimport blob;\nbackend default none;\n\nsub vcl_recv {\n\t"   # the statement on line 6
COOKIE = BLOB.replace("blob", "cookie")


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
    # the right side of + typed as the left one outside a string context: an IP constant here
    "ip_plus_ip": (case('if (client.ip == client.ip + "1.2.3.4") {}'), 6, 29, "IP + IP not possible."),
    # VCC reads '-' only where an INT, REAL, DURATION or string is wanted
    "minus_where_bool": (case("if (-1) {}"), 6, 6, "Unknown token '-' when looking for BOOL"),
    "minus_after_not": (case("if (!-1) {}"), 6, 7, "Unknown token '-' when looking for BOOL"),
    "minus_where_time": (case("set req.http.x = now + -1s;"), 6, 25, "Unknown token '-' when looking for TIME"),
    "minus_where_bytes": (case('set req.http.x = std.bytes("x", -1KB);'), 6, 34,
                          "Unknown token '-' when looking for BYTES"),
    "minus_bool_compare": (case("if (-1 == 1) {}"), 6, 6, "Unknown token '-' when looking for BOOL"),
    # arguments of the vmod-only types: typed as any expression, then compared with the parameter's type
    "http_arg_string": (case("std.rollback(req.url);"), 6, 15, "Expression has type STRING, expected HTTP"),
    "http_arg_int": (case("std.rollback(1);"), 6, 15, "Expression has type INT, expected HTTP"),
    "http_arg_time": (case("std.rollback(now);"), 6, 15, "Expression has type TIME, expected HTTP"),
    "header_arg_literal": (case('std.collect("x");'), 6, 14, "Expression has type STRING, expected HEADER"),
    "header_arg_sum": (case('std.collect(req.http.x + "a");'), 6, 25, "HEADER + STRING not possible."),
    # a call as a statement: VCC stops at its ')' when an argument is missing
    "statement_call_missing_arg": (case("std.log();"), 6, 10, "Argument 's' missing"),
    "statement_call_named_only": (case('std.collect(sep=",");'), 6, 21, "Argument 'hdr' missing"),
    "ip_constant_path": (case('if (client.ip == "/tmp/sock") {}'), 6, 19,
                         "Cannot convert to an IP address: '\"/tmp/sock\"'"),
    # ~ against a probe: declared before the use it has the wrong type, after it it must be an acl
    "match_probe_declared_before": (H.replace("backend default none;\n", "backend default none;\nprobe p { .url = \"/\"; }\n")
                                    + "sub vcl_recv {\n\tif (client.ip ~ p) {}\n}\n", 7, 18,
                                    "Expression has type PROBE, expected ACL"),
    "match_probe_declared_after": (case("if (client.ip ~ p) {}") + 'probe p { .url = "/"; }\n', 8, 7,
                                   "Name p must have type 'acl'."),
    # enum words are case-sensitive, though `default` and `true` are symbols VCC reads in any case
    "enum_lower_default": (BLOB + 'set req.http.x = blob.encode(HEX, default, blob.decode(encoded="ab"));\n}\n', 6, 36,
                           "Wrong enum value.  Expected one of:"),
    "enum_mixed_default": (BLOB + 'set req.http.x = blob.encode(HEX, Default, blob.decode(encoded="ab"));\n}\n', 6, 36,
                           "Wrong enum value.  Expected one of:"),
    "enum_true": (BLOB + 'set req.http.x = blob.encode(HEX, TRUE, blob.decode(encoded="ab"));\n}\n', 6, 36,
                  "Wrong enum value.  Expected one of:"),
    # a sum of strings is a regex; its first other token is quoted, a number without its unit
    "regex_sum_duration": (case('if (req.url ~ "a" + 1s) {}'), 6, 22, "Expected CSTR got '1'"),
    "regex_sum_spaced_bytes": (case('if (req.url ~ "a" + 10 KB) {}'), 6, 22, "Expected CSTR got '10'"),
    "regex_sum_name": (case('if (req.url ~ "a" + req.url) {}'), 6, 22, "Expected CSTR got 'req'"),
    "regex_minus": (case("if (req.url ~ -1) {}"), 6, 16, "Unknown token '-' when looking for REGEX"),
    "regsub_regex_minus": (case('set req.http.x = regsub(req.url, -1, "b");'), 6, 35,
                           "Unknown token '-' when looking for REGEX"),
    "regex_arg_minus": (COOKIE + "cookie.keep_re(-1);\n}\n", 6, 17, "Unknown token '-' when looking for REGEX"),
    "regex_arg_int": (COOKIE + "cookie.keep_re(1);\n}\n", 6, 17, "Expression has type INT, expected REGEX"),
    "match_minus_left": (case('if (-1 ~ "a") {}'), 6, 6, "Unknown token '-' when looking for BOOL"),
    # one argument too many: VCC reads named arguments there, so an identifier is an unknown name
    "extra_arg_minus": (case('std.log("a", -1);'), 6, 15, "Expected ')' got '-'"),
    "extra_arg_not": (case('std.log("a", !true);'), 6, 15, "Expected ')' got '!'"),
    "extra_arg_duration": (case('std.log("a", 1s);'), 6, 15, "Expected ')' got '1'"),
    "extra_arg_sum": (case('std.log("a", 1 + 2);'), 6, 15, "Expected ')' got '1'"),
    "extra_arg_string_sum": (case('std.log("a", "x" + "y");'), 6, 15, "Expected ')' got '\"x\"'"),
    "extra_arg_bool_or": (case('std.log("a", true || false);'), 6, 15, "Unknown argument 'true'"),
    "extra_arg_compare": (case('std.log("a", req.url == "x");'), 6, 15, "Unknown argument 'req'"),
    "extra_arg_match": (case('set req.http.x = std.toupper("a", req.url ~ "x");'), 6, 36, "Unknown argument 'req'"),
    "extra_arg_call": (case('set req.http.x = std.toupper("a", std.tolower("b"));'), 6, 36, "Unknown argument 'std'"),
    "extra_arg_capital_true": (case('set req.http.x = std.toupper("a", TRUE);'), 6, 36, "Unknown argument 'TRUE'"),
    "positional_after_named_name": (case('set req.http.x = std.toupper(s="a", req.url);'), 6, 38,
                                    "Unknown argument 'req'"),
    "positional_after_named_string": (case('set req.http.x = std.toupper(s="a", "b");'), 6, 38,
                                      "Expected ')' got '\"b\"'"),
    # a number and its unit as two tokens: the unit's position
    "spaced_bytes_unit_quoted": (case('set req.http.x = std.bytes("1", 10 "KB");'), 6, 37,
                                 "Expected BYTES unit (B, KB, MB...) got '\"KB\"'"),
    "spaced_bytes_unit_unknown": (case('set req.http.x = std.bytes("1", 10 xB);'), 6, 37,
                                  "Unknown BYTES unit of measurement ([KMGTP][B])'xB'"),
    "spaced_duration_unit_unknown": (case("set req.ttl = 10 x;"), 6, 19, "Unknown duration unit 'x'"),
    "enum_not_a_word": (BLOB + 'set req.http.x = blob.encode(req.url, blob=blob.decode(encoded="ab"));\n}\n', 6, 31,
                        "Wrong enum value.  Expected one of:"),
}


# more cases, as `varnishd -C` 7.1.1 reports them: paths the mutation run and coverage found untested, and
# differences from VCC fixed with them (instances named by their type, unknown methods as properties,
# regsub's named arguments, `default` where an ACL is wanted)
RR = ("backend default none;\n", "backend default none;\nsub vcl_init { new rr = directors.round_robin(); }\n")
CASES.update({
    "acl_backend_declared": (case('if (client.ip ~ default) {}'), 6, 18, "Symbol 'default' is a reserved word."),
    "acl_default_nobackend": ("vcl 4.1;\nbackend b none;\nsub vcl_recv {\n\tif (client.ip ~ default) {}\n}\n", 4, 18, "Symbol 'default' is a reserved word."),
    "acl_default_upper": (case('if (client.ip ~ Default) {}'), 6, 18, "Symbol 'default' is a reserved word."),
    "acl_string_right": (case('if (client.ip ~ "1.2.3.4") {}'), 6, 18, 'Expression has type STRING, expected ACL'),
    "acl_undefined": (case('if (client.ip ~ nosuch) {}'), 6, 18, 'Undefined acl nosuch, first reference:'),
    "backend_undefined_dotted": (case('set req.backend_hint = foo.bar;'), 6, 25, "Symbol not found: 'foo.bar'"),
    "body_read": (case('set req.http.x = req.body;'), 6, 23, "Unknown property 'body' for type HTTP"),
    "call_before_import": ("vcl 4.1;\nbackend default none;\nsub vcl_recv {\n\tset req.http.x = std.toupper(\"a\");\n}\nimport std;\n", 4, 19, "Symbol not found: 'std.toupper'"),
    "compare_ip_string": (case('if (client.ip == req.url) {}'), 6, 16, "Comparison of different types: IP '==' STRING"),
    "compare_mixed": (case('if (1 == "a") {}'), 6, 8, "Comparison of different types: INT '==' STRING"),
    "div_bool": (case('if (true / 2) {}'), 6, 11, 'Operator / not possible on type BOOL.'),
    "duration_div_duration": (case('set req.ttl = 10s / 2s;'), 6, 20, 'DURATION / DURATION not possible.'),
    "duration_plus_int": (case('set req.ttl = 1s + 1;'), 6, 19, 'DURATION + INT not possible.'),
    "instance_backend": (case('set req.backend_hint = rr;').replace(*RR), 7, 25, 'Expression has type directors.round_robin, expected BACKEND'),
    "instance_bool": (case('if (rr) {}').replace(*RR), 7, 6, 'Expression has type directors.round_robin, expected BOOL'),
    "int_div_real": (case('set req.http.x = 2 / 1.5;'), 6, 21, 'INT / REAL not possible.'),
    "int_paren_method": (case('set req.http.x = (1).foo();'), 6, 23, "Unknown property 'foo' for type INT"),
    "match_on_int": (case('if (1 ~ "a") {}'), 6, 8, 'Operator ~ not possible on INT'),
    "method_unknown": (case('set req.http.x = rr.nope();').replace(*RR), 7, 22, "Unknown property 'nope' for type directors.round_robin"),
    "method_unknown_stmt": (case('rr.nope();').replace(*RR), 7, 5, "Unknown property 'nope' for type directors.round_robin"),
    "mul_string": (case('set req.http.x = "a" * 2;'), 6, 23, 'Operator * not possible on type STRING.'),
    "object_as_call": (case('set req.http.x = directors.round_robin();'), 6, 19, "Symbol 'directors' type (object) can not be used in expression."),
    "object_as_call_stmt": (case('directors.round_robin();'), 6, 23, 'Symbol cannot be used here.'),
    "object_method_call": (case('set req.http.x = directors.round_robin.backend();'), 6, 19, 'Syntax error.While compiling function call:'),
    "object_type_value": (case('set req.http.x = directors.round_robin;'), 6, 19, "Symbol 'directors' type (object) can not be used in expression."),
    "real_times_duration": (case('set req.ttl = 1.5 * 1s;'), 6, 20, 'REAL * DURATION not possible.'),
    "regex_bad": (case('if (req.url ~ "(") {}'), 6, 16, 'Regexp compilation error:'),
    "regex_sum_int": (case('if (req.url ~ "a" + 1) {}'), 6, 22, "Expected CSTR got '1'"),
    "regsub_named": (case('set req.http.x = regsub(req.url, "a", s="b");'), 6, 40, "Symbol not found: 's'"),
    "regsub_named_first": (case('set req.http.x = regsub(s=req.url, "a", "b");'), 6, 26, "Symbol not found: 's'"),
    "regsub_named_regex": (case('set req.http.x = regsub(req.url, s="a", "b");'), 6, 35, "Symbol not found: 's'"),
    "regsub_one": (case('set req.http.x = regsub(req.url);'), 6, 33, "Expected ',' got ')'"),
    "unknown_http_prop": (case('set req.http.x = req.nope;'), 6, 23, "Unknown property 'nope' for type HTTP"),
    "unknown_named_arg": (case('set req.http.x = std.toupper(x="a");'), 6, 31, "Unknown argument 'x'"),
    "unknown_symbol_dotted": (case('set req.http.x = foo.bar;'), 6, 19, "Symbol not found: 'foo.bar'"),
    "var_resolve": (case('set req.http.x = req.url.resolve();'), 6, 27, "Unknown property 'resolve' for type STRINGS"),
    "var_unknown_method": (case('set req.http.x = req.url.foo();'), 6, 27, "Unknown property 'foo' for type STRINGS"),
    "vmod_as_value": (case('set req.http.x = std;'), 6, 19, "Symbol 'std' type (vmod) can not be used in expression."),
    "void_in_expr": (case('set req.http.x = std.log("a");'), 6, 26, 'Function returns VOID:'),
})
# and what it compiles
COMPILES = {
    "acl_in_string": case('set req.http.x = a;').replace("backend default none;\n", "backend default none;\nacl a { \"1.2.3.4\"; }\n"),
    "bool_and_string": case('if (true && req.url) {}'),
    "enum_missing": BLOB + 'set req.http.x = blob.encode(blob=blob.decode(encoded="ab"));\n}\n',
    "name_upper_method": case('set req.http.x = req.url.upper();'),
    "not_string": case('if (!req.url) {}'),
    "or_int": case('if (1 || true) {}'),
    "paren_lower": case('set req.http.x = (req.url).lower();'),
    "paren_resolve": case('set req.backend_hint = (req.backend_hint).resolve();'),
    "probe_in_string": case('set req.http.x = p;').replace("backend default none;\n", "backend default none;\nprobe p { .url = \"/\"; }\n"),
    "strands_arg_int": case('set req.http.x = std.toupper(1);'),
    "time_minus_time_in_duration": case('set req.ttl = now - now;'),
    "time_plus_time": case('set req.http.x = now + now;'),
    "vmod_upper": case('set req.http.x = STD.toupper("a");'),
}

# operators, conversions and arguments (a string where an ENUM is wanted; an IP constant that does not resolve)
CASES.update({
    "acl_in_backend": (case('set req.backend_hint = a;').replace("backend default none;\n", "backend default none;\nacl a { \"1.2.3.4\"; }\n"), 7, 25, 'Expression has type ACL, expected BACKEND'),
    "and_time_left": (case('if (now && true) {}'), 6, 6, "'&&' must be preceeded by BOOL, found TIME."),
    "and_time_right": (case('if (true && now) {}'), 6, 14, "'&&' must be followed by BOOL, found TIME."),
    "backend_plus_int": (case('set req.backend_hint = req.backend_hint + 1;'), 6, 42, 'BACKEND + INT not possible.'),
    "duration_arg_int": (case('set req.http.x = std.duration("1s", 1);'), 6, 38, 'Expression has type INT, expected DURATION'),
    "duration_minus_time": (case('set req.ttl = 1s - now;'), 6, 19, 'DURATION - TIME not possible.'),
    "duration_unit_upper": (case('set req.ttl = 10 S;'), 6, 19, "Unknown duration unit 'S'"),
    "enum_as_string": (BLOB + 'set req.http.x = blob.encode("HEX", blob=blob.decode(encoded="ab"));\n}\n', 6, 31, 'Expected ID got \'"HEX"\''),
    "header_name_bad": (case('set req.http.x = req.http.a;b;'), 6, 30, "Symbol not found: 'b'"),
    "int_plus_string_bool": (case('if (1 + "a") {}'), 6, 8, 'INT + STRING not possible.'),
    "int_times_string": (case('set req.http.x = 2 * "a";'), 6, 21, 'INT * STRING not possible.'),
    "ip_arg_bad": (case('set req.http.x = std.port("nope nope");'), 6, 28, 'IP constant \'"nope nope"\' could not be resolved to an IP address:'),
    "ip_minus": (case('set req.http.x = client.ip - 1;'), 6, 29, 'IP - INT not possible.'),
    "lt_ip": (case('if (client.ip < client.ip) {}'), 6, 16, 'Operator < not possible on IP'),
    "not_imported": ("vcl 4.1;\nbackend default none;\nsub vcl_recv {\n\tset req.http.x = std.toupper(\"a\");\n}\n", 4, 19, "Symbol not found: 'std.toupper'"),
    "not_ip": (case('if (!client.ip) {}'), 6, 6, "'!' must be followed by BOOL, found IP."),
    "not_time": (case('if (!now) {}'), 6, 6, "'!' must be followed by BOOL, found TIME."),
    "or_ip": (case('if (false || client.ip) {}'), 6, 15, "'||' must be followed by BOOL, found IP."),
    "probe_in_backend": (case('set req.backend_hint = p;').replace("backend default none;\n", "backend default none;\nprobe p { .url = \"/\"; }\n"), 7, 25, 'Expression has type PROBE, expected BACKEND'),
    "real_mod_int": (case('set req.http.x = 1 % 2.5;'), 6, 21, 'INT % REAL not possible.'),
    "regsub_regex_int": (case('set req.http.x = regsub(req.url, 1, "b");'), 6, 35, 'Expression has type INT, expected REGEX'),
    "regsuball_bad_regex": (case('set req.http.x = regsuball(req.url, "(", "b");'), 6, 38, 'Regexp compilation error:'),
    "string_minus_int": (case('set req.http.x = "a" - 1;'), 6, 23, 'STRING - INT not possible.'),
    "time_arg_string": (case('set req.http.x = std.time2real("x", 1.0);'), 6, 33, 'Expression has type STRING, expected TIME'),
    "time_compare_duration": (case('if (now > 1s) {}'), 6, 10, "Comparison of different types: TIME '>' DURATION"),
    "vmod_func_unknown": (case('set req.http.x = std.nope("a");'), 6, 19, "Symbol not found: 'std.nope'"),
    "vmod_unknown": (case('set req.http.x = nope.nope("a");'), 6, 19, "Symbol not found: 'nope.nope'"),
})
COMPILES.update({
    "acl_match_twice": case('if (client.ip ~ a && server.ip ~ a) {}').replace("backend default none;\n", "backend default none;\nacl a { \"1.2.3.4\"; }\n"),
    "acl_upper_ref": case('if (client.ip ~ A) {}').replace("backend default none;\n", "backend default none;\nacl a { \"1.2.3.4\"; }\n"),
    "backend_plus": case('set req.http.x = req.backend_hint + "a";'),
    "backend_upper_ref": case('set req.backend_hint = B;').replace("backend default none;\n", "backend default none;\nbackend b none;\n"),
    "bool_arg_int": case('set req.http.x = std.fnmatch("a", "b", pathname=1);'),
    "bool_plus_bool": case('set req.http.x = true + false;'),
    "bytes_plus_bytes": case('set req.http.x = std.bytes("1", 1KB + 1KB);'),
    "bytes_times_int": case('set req.http.x = std.bytes("1", 1KB * 2);'),
    "bytes_times_real": case('set req.http.x = std.bytes("1", 1KB * 1.5);'),
    "call_func_as_string_method": case('set req.http.x = std.toupper("a").lower();'),
    "duration_times_real": case('set req.ttl = 1s * 1.5;'),
    "eq_backend": case('if (req.backend_hint == default) {}'),
    "headers_methods": case('set req.http.x = req.http.y.upper();'),
    "int_in_real_arg": case('set req.http.x = std.round(2);'),
    "ip6_port": case('if (client.ip == "[::1]:80") {}'),
    "ip_arg_string": case('set req.http.x = std.port("1.2.3.4");'),
    "ip_name": case('if (client.ip == "localhost") {}'),
    "ip_port": case('if (client.ip == "1.2.3.4:80") {}'),
    "lt_string": case('if (req.url < "a") {}'),
    "match_acl_not": case('if (client.ip !~ a) {}').replace("backend default none;\n", "backend default none;\nacl a { \"1.2.3.4\"; }\n"),
    "match_not": case('if (req.url !~ "a") {}'),
    "neg_duration": case('set req.http.x = -1s;'),
    "real_in_int": case('set req.http.x = std.integer(1.5, 0);'),
    "real_times_int": case('set req.http.x = 1.5 * 2;'),
    "regsub_sub_int": case('set req.http.x = regsub(req.url, "a", 1);'),
    "time_minus_duration": case('set req.http.x = now - 1s;'),
    "true_upper": case('if (TRUE) {}'),
    "vmod_func_upper": case('set req.http.x = std.TOUPPER("a");'),
})

# An object instance is typed as its object, named by vmod and class; the operator or context refuses it
# (varnishd -C 7.1.1; before, the instance was refused at once as "expected BOOL"/"expected INSTANCE")
RRH = ("backend default none;\n", "backend default none;\nsub vcl_init { new rr = directors.round_robin(); new h = directors.hash(); }\n")
CASES.update({
    "instance_eq": (case("if (rr == rr) {}").replace(*RRH), 7, 9, "Operator == not possible on directors.round_robin"),
    "instance_ne": (case("if (rr != rr) {}").replace(*RRH), 7, 9, "Operator != not possible on directors.round_robin"),
    "instance_eq_in_string": (case("set req.http.x = (rr == rr);").replace(*RRH), 7, 23,
                              "Operator == not possible on directors.round_robin"),
    "instance_match": (case("if (rr ~ rr) {}").replace(*RRH), 7, 9, "Operator ~ not possible on directors.round_robin"),
    "instance_not": (case("if (!rr) {}").replace(*RRH), 7, 6, "'!' must be followed by BOOL, found directors.round_robin."),
    "instance_and": (case("if (rr && true) {}").replace(*RRH), 7, 6,
                     "'&&' must be preceeded by BOOL, found directors.round_robin."),
    "instance_times": (case("if (rr * 2) {}").replace(*RRH), 7, 9, "Operator * not possible on type directors.round_robin."),
    "instance_minus": (case("if (rr - 1) {}").replace(*RRH), 7, 9, "directors.round_robin - INT not possible."),
    "instance_plus_string": (case('if (rr + "a") {}').replace(*RRH), 7, 9, "directors.round_robin + STRING not possible."),
    "instance_plus_backend": (case("set req.backend_hint = rr + 1;").replace(*RRH), 7, 28,
                              "directors.round_robin + INT not possible."),
    "instance_duration_times": (case("set req.ttl = rr * 2;").replace(*RRH), 7, 19,
                                "Operator * not possible on type directors.round_robin."),
    "instance_duration": (case("set req.ttl = rr;").replace(*RRH), 7, 16, "Expression has type directors.round_robin, expected DURATION"),
    "instance_header_arg": (case("std.collect(rr);").replace(*RRH), 7, 14, "Expression has type directors.round_robin, expected HEADER"),
    "instance_as_regex": (case("if (req.url ~ rr) {}").replace(*RRH), 7, 16, "Expression has type directors.round_robin, expected REGEX"),
    # a constructor stops at its ')' too (before, the name was pointed at)
    "constructor_argument_missing": ("vcl 4.1;\nimport blob;\nbackend default none;\nsub vcl_init {\n\tnew b = blob.blob();\n}\n",
                                     5, 20, "Argument 'encoded' missing"),
    # an unnamed parameter is known by its place
    "unnamed_argument_missing": (case("set req.backend_hint = h.backend();").replace(*RRH), 7, 35, "Argument 1 missing"),
    # a number with a duration unit glued on, where BYTES are wanted: the letters are a bytes unit
    "glued_bytes_s": (case('set req.http.x = std.bytes("x", 10s);'), 6, 36, "Unknown BYTES unit of measurement ([KMGTP][B])'s'"),
    "glued_bytes_ms": (case('set req.http.x = std.bytes("x", 10ms);'), 6, 36, "Unknown BYTES unit of measurement ([KMGTP][B])'ms'"),
    "glued_bytes_real": (case('set req.http.x = std.bytes("x", 1.5h);'), 6, 37, "Unknown BYTES unit of measurement ([KMGTP][B])'h'"),
})

# A regex operand (vcc_expr5 with REGEX wanted): "a" + "b" + ... is one constant, anything else one
# operand typed as such, a parenthesised one at its '(' (varnishd -C 7.1.1; before, every sum was
# "Expected CSTR" at its first token and a parenthesised right part was folded in)
CASES.update({
    "regex_int_plus_string": (case('if (req.url ~ 1 + "a") {}'), 6, 16, "Expression has type INT, expected REGEX"),
    "regex_var_plus_string": (case('if (req.url ~ req.url + "a") {}'), 6, 16,
                              "Expression has type STRING, expected REGEX"),
    "regex_plus_var": (case('if (req.url ~ "a" + req.url) {}'), 6, 22, "Expected CSTR got 'req'"),
    "regex_plus_parens": (case('if (req.url ~ "a" + ( "b")) {}'), 6, 22, "Expected CSTR got '('"),
    "regex_plus_parens_sum": (case('if (req.url ~ "a" + ("b" + "c")) {}'), 6, 22, "Expected CSTR got '('"),
    "regex_plus_minus": (case('if (req.url ~ "a" + -1) {}'), 6, 22, "Expected CSTR got '-'"),
    "regex_parens_int_sum": (case("if (req.url ~ (1 + 1)) {}"), 6, 16, "Expression has type INT, expected REGEX"),
    "regex_parens_var": (case("if (req.url ~ (req.url)) {}"), 6, 16, "Expression has type STRING, expected REGEX"),
    "regex_parens_int_plus_var": (case("if (req.url ~ (1 + req.url)) {}"), 6, 19, "INT + STRING not possible."),
    "regex_parens_bad_token": (case("if (req.url ~ (<<)) {}"), 6, 17, "Unknown token '<<' when looking for REGEX"),
    "regex_parens_plus_int": (case('if (req.url ~ ("a" + 1)) {}'), 6, 23, "Expected CSTR got '1'"),
    "regsub_regex_plus_parens": (case('set req.url = regsub(req.url, "a" + ("b"), "c");'), 6, 38,
                                 "Expected CSTR got '('"),
    "regsub_regex_int_sum": (case('set req.url = regsub(req.url, 1 + 1, "c");'), 6, 32,
                             "Expression has type INT, expected REGEX"),
})
COMPILES.update({
    "regex_sum_of_three": case('if (req.url ~ "a" + "b" + "c") {}'),
    "regex_parens_sum": case('if (req.url ~ ("a" + "b")) {}'),
    "regsub_regex_parens": case('set req.url = regsub(req.url, ("a"), "c");'),
})

# more places the mutation run found untested (varnishd -C 7.1.1)
CASES.update({
    # an ENUM in parentheses: VCC stops at the '(', wherever the word inside is
    "enum_in_parens_spaced": (BLOB + 'set req.http.x = blob.encode(( HEX), blob=blob.decode(encoded="x"));\n}\n',
                              6, 31, "Expected ID got '('"),
    # an unnamed parameter after a PRIV_* one is numbered with it (fileread's PRIV_CALL is argument 1)
    "fileread_argument_missing": (case("set req.http.x = std.fileread();"), 6, 32, "Argument 2 missing"),
    "extra_argument_bad_token": (case('set req.http.x = std.toupper("a", =);'), 6, 36, "Expected ')' got '='"),
})

# regsub()/regsuball() read as VCC reads them: each argument in turn, then the ',' after it, and the
# ')' after the third (varnishd -C 7.1.1; before, "regsub() takes three arguments: ...", a message
# varnishd never prints, and a ',' after the first or second argument was refused at the ',')
CASES.update({
    "regsub_none": (case("set req.http.x = regsub();"), 6, 26, "Unknown token ')' when looking for STRING"),
    "regsub_subject_comma": (case('set req.http.x = regsub("a",);'), 6, 30, "Unknown token ')' when looking for REGEX"),
    "regsub_two": (case('set req.http.x = regsuball("a", "b");'), 6, 37, "Expected ',' got ')'"),
    "regsub_regex_comma": (case('set req.http.x = regsub("a", "b",);'), 6, 35, "Unknown token ')' when looking for STRING"),
    "regsub_third_comma": (case('set req.http.x = regsub("a", "b", "c",);'), 6, 39, "Expected ')' got ','"),
    "regsub_four": (case('set req.http.x = regsub("a", "b", "c", "d");'), 6, 39, "Expected ')' got ','"),
    # a named fourth argument is no symbol VCC looks up: it stops at the ',' before it
    "regsub_four_named": (case('set req.http.x = regsub(req.url, "a", "b", s="d");'), 6, 43, "Expected ')' got ','"),
    # the arguments are read before the ',' that is one too many
    "regsub_four_bad_regex": (case('set req.http.x = regsub(req.url, "(", "b", "d");'), 6, 35, "Regexp compilation error:"),
    "regsub_four_bad_sub": (case('set req.http.x = regsub(req.url, "a", req.nope, "d");'), 6, 44,
                            "Unknown property 'nope' for type HTTP"),
})

# the eighth mutation run's survivors, and the differences from VCC found with them (varnishd -C 7.1.1)
CASES.update({
    # after `IP ~` VCC reads one operand wanting an ACL (before, the whole sum was typed as a string)
    "acl_paren_sum": (case("if (client.ip ~ (1 + 1)) {}"), 6, 18, "Expression has type INT, expected ACL"),
    "acl_minus": (case("if (client.ip ~ -1) {}"), 6, 18, "Unknown token '-' when looking for ACL"),
    "acl_int_plus_string": (case('if (client.ip ~ 1 + "a") {}'), 6, 18, "Expression has type INT, expected ACL"),
    "acl_paren_int_plus_string": (case('if (client.ip ~ (1 + "a")) {}'), 6, 21, "INT + STRING not possible."),
    "acl_name_plus": (case("if (client.ip ~ a + 1) {}").replace("backend default none;\n", 'backend default none;\nacl a { "1.2.3.4"; }\n'),
                      7, 20, "Expected ')' got '+'"),
    "acl_name_times_plus": (case("if (client.ip ~ a * 2 + 1) {}").replace("backend default none;\n", 'backend default none;\nacl a { "1.2.3.4"; }\n'),
                            7, 20, "Expected ')' got '*'"),
    "acl_call_plus": (case('if (client.ip ~ std.toupper("a") + 1) {}'), 6, 18, "Expression has type STRING, expected ACL"),
    # a method on a constant string where a regex is read: VCC has its REGEX (before: "Expected CSTR
    # got '?'", or the whole typed as a STRING)
    "regex_literal_method": (case('if (req.url ~ "a".lower()) {}'), 6, 20, "Unknown property 'lower' for type REGEX"),
    "regex_literal_methods": (case('if (req.url ~ "a".lower().upper()) {}'), 6, 20,
                              "Unknown property 'lower' for type REGEX"),
    "regex_paren_literal_method": (case('if (req.url ~ ("a").lower()) {}'), 6, 22,
                                   "Unknown property 'lower' for type REGEX"),
    "regex_paren_sum_method": (case('if (req.url ~ ("a" + "b").lower()) {}'), 6, 28,
                               "Unknown property 'lower' for type REGEX"),
    "regex_paren_var_method": (case("if (req.url ~ (req.url).lower()) {}"), 6, 16,
                               "Expression has type STRING, expected REGEX"),
    "regex_paren_int_method": (case("if (req.url ~ (1).lower()) {}"), 6, 20, "Unknown property 'lower' for type INT"),
    "regex_sum_literal_method": (case('if (req.url ~ "a" + "b".foo()) {}'), 6, 26, "Unknown property 'foo' for type REGEX"),
    "regex_sum_paren_method": (case('if (req.url ~ "a" + ("b").lower()) {}'), 6, 22, "Expected CSTR got '('"),
    "regex_sum_paren_var_method": (case('if (req.url ~ "a" + (req.url).lower()) {}'), 6, 22, "Expected CSTR got '('"),
    "regsub_literal_method": (case('set req.http.x = regsub(req.url, "a".lower(), "b");'), 6, 39,
                              "Unknown property 'lower' for type REGEX"),
    # after '+', a product's first operand is what VCC wants to be a constant (before, the product was typed)
    "regex_sum_product_int": (case('if (req.url ~ "a" + 1 * 2) {}'), 6, 22, "Expected CSTR got '1'"),
    "regex_sum_product_var": (case('if (req.url ~ "a" + req.url * 2) {}'), 6, 22, "Expected CSTR got 'req'"),
    "regex_sum_product_paren": (case('if (req.url ~ "a" + (1) * 2) {}'), 6, 22, "Expected CSTR got '('"),
    "regex_sum_product_minus": (case('if (req.url ~ "a" + -1 * 2) {}'), 6, 22, "Expected CSTR got '-'"),
    "regex_sum_product_method": (case('if (req.url ~ "a" + "b".foo() * 2) {}'), 6, 26,
                                 "Unknown property 'foo' for type REGEX"),
    "regex_sum_int_method": (case('if (req.url ~ "a" + 1 .lower()) {}'), 6, 22, "Expected CSTR got '1'"),
    "regex_paren_minus_sum": (case("if (req.url ~ (-1 + 1)) {}"), 6, 17, "Unknown token '-' when looking for REGEX"),
    "regex_sum_bad": (case('if (req.url ~ "(" + "a") {}'), 6, 16, "Regexp compilation error:"),
    # .lower()/.upper() are STRING's: VCC refuses them on another type (before, converted to a string)
    "int_lower": (case("set req.http.x = (1).lower();"), 6, 23, "Unknown property 'lower' for type INT"),
    "int_lower_in_bool": (case("if ((1).lower()) {}"), 6, 10, "Unknown property 'lower' for type INT"),
    "time_var_lower": (case("set req.http.x = now.lower();"), 6, 23, "Unknown property 'lower' for type TIME"),
    "ip_var_upper": (case("set req.http.x = client.ip.UPPER();"), 6, 29, "Unknown property 'UPPER' for type IP"),
    # vmod.object.<not a method>: the class's name is what VCC finds (before, "Syntax error.")
    "object_dot_unknown": (case("set req.http.x = directors.round_robin.x();"), 6, 19,
                           "Symbol 'directors' type (object) can not be used in expression."),
    "object_dot_unknown_method": (case("set req.http.x = directors.round_robin.x.backend();"), 6, 19,
                                  "Symbol 'directors' type (object) can not be used in expression."),
    "object_dot_unknown_stmt": (case("directors.round_robin.x();"), 6, 23, "Symbol cannot be used here."),
    "object_method_dot": (case("set req.http.x = directors.round_robin.backend.y();"), 6, 19,
                          "Syntax error.While compiling function call:"),
    "unknown_function_no_args": (case("set req.http.x = nosuch();"), 6, 19, "Symbol not found: 'nosuch'"),
    "paren_undefined_resolve": (case("set req.backend_hint = (nosuch).resolve();"), 6, 26,
                                "Undefined backend nosuch, first reference:"),
})
COMPILES.update({
    "paren_default_resolve": case("set req.backend_hint = (default).resolve();"),
    "paren_sum_lower": case('set req.http.x = (1 + "a").lower();'),
    "paren_header_lower": case("set req.http.x = (req.http.foo).lower();"),
})
# declared names called, or methods called on them (varnishd -C 7.1.1; before, a sub called in an
# expression or `nosuch.resolve()` had other words, `default` where a probe is wanted was not found)
DECL = ('vcl 4.1;\nbackend b none;\nacl a { "1.2.3.4"; }\nprobe p { .url = "/"; }\n'
        'backend c { .host = "127.0.0.1"; .probe = p; }\nsub foo { }\nsub vcl_recv {\n\tcall foo;\n'
        '\tif (client.ip ~ a) { set req.backend_hint = b; }\n\tset req.backend_hint = c;\n\t')   # line 11


def decl(stmt: str) -> str:
    return DECL + stmt + "\n}\n"


CASES.update({
    "sub_called_in_expr": (decl("set req.http.x = Foo();"), 11, 22, "Symbol 'foo' can only be used as a SUB expression"),
    "sub_name_in_expr": (decl("set req.http.x = Foo;"), 11, 22, "Symbol 'foo' can only be used as a SUB expression"),
    "sub_called_as_statement": (decl("Foo();"), 11, 5, "Symbol cannot be used here."),
    "backend_called_as_statement": (decl("b();"), 11, 3, "Symbol cannot be used here."),
    "acl_called_as_statement": (decl("a();"), 11, 3, "Symbol cannot be used here."),
    "probe_called_as_statement": (decl("p();"), 11, 3, "Symbol cannot be used here."),
    "func_called_as_statement": (decl("true();"), 11, 6, "Symbol cannot be used here."),
    "reserved_called_as_statement": (decl("backend();"), 11, 9, "Symbol cannot be used here."),
    "action_in_expr": (decl("set req.http.x = if();"), 11, 19, "Symbol 'if' type (action) can not be used in expression."),
    "resolve_unknown": (decl("set req.backend_hint = nosuch.resolve();"), 11, 25, "Symbol not found: 'nosuch.resolve'"),
    "resolve_acl": (decl("set req.backend_hint = a.resolve();"), 11, 27, "Unknown property 'resolve' for type ACL"),
    "sub_method": (decl("set req.http.x = foo.bar();"), 11, 22, "Symbol 'foo' can only be used as a SUB expression"),
    "sub_lower": (decl("set req.http.x = foo.lower();"), 11, 22, "Symbol 'foo' can only be used as a SUB expression"),
    "resolve_sub": (decl("set req.backend_hint = foo.resolve();"), 11, 28,
                    "Symbol 'foo' can only be used as a SUB expression"),
    "resolve_not_available": (decl("set req.backend_hint = bereq.backend.resolve();"), 11, 25,
                              "Not available in subroutine 'vcl_recv'."),
    "backend_method": (decl("set req.http.x = b.foo();"), 11, 21, "Unknown property 'foo' for type BACKEND"),
    "backend_lower": (decl("set req.http.x = b.lower();"), 11, 21, "Unknown property 'lower' for type BACKEND"),
    "acl_lower": (decl("set req.http.x = a.lower();"), 11, 21, "Unknown property 'lower' for type ACL"),
    "probe_default_missing": (decl("if (p == default) {}"), 11, 18, "No default probe defined"),
    "probe_undefined": (decl("if (p == nosuch) {}"), 11, 11, "Undefined probe nosuch, first reference:"),
    "paren_sum_method": (decl('set req.http.x = (1 + "a").foo();'), 11, 29, "Unknown property 'foo' for type STRINGS"),
    "storage_method": (decl("set req.http.x = storage.s0.foo();"), 11, 30, "Unknown property 'foo' for type STEVEDORE"),
})
CASES.update({
    "object_value_dot_unknown": (case("set req.http.x = directors.round_robin.x;"), 6, 19,
                                 "Symbol 'directors' type (object) can not be used in expression."),
    "object_value_dot_method": (case("set req.http.x = directors.round_robin.backend;"), 6, 19,
                                "Syntax error.While compiling function call:"),
    "object_value_dot_unknown_method": (case("set req.http.x = directors.round_robin.x.backend;"), 6, 19,
                                        "Symbol 'directors' type (object) can not be used in expression."),
    "vmod_value_dotted_unknown": (case("set req.http.x = std.x.toupper;"), 6, 19, "Symbol not found: 'std.x.toupper'"),
    "vmod_value_object_late": (case("set req.http.x = directors.x.round_robin;"), 6, 19,
                               "Symbol not found: 'directors.x.round_robin'"),
})
CASES.update({
    "default_in_string": (case("set req.http.x = default;"), 6, 19, "Symbol 'default' is a reserved word."),
    "default_in_bool": (case("if (default) {}"), 6, 6, "Symbol 'default' is a reserved word."),
    "regsuball_alone": (case("set req.url = regsuball;"), 6, 25, "Expected '(' got ';'"),
    "var_property": (case("set req.http.x = req.url.foo;"), 6, 27, "Unknown property 'foo' for type STRINGS"),
    # a reserved word or an action in an expression, named as written (before: lower case), dotted or not
    "reserved_dotted": (case("set req.http.x = acl.foo;"), 6, 19, "Symbol 'acl' type (reserved) can not be used in expression."),
    "reserved_as_written": (case("set req.http.x = Sub;"), 6, 19, "Symbol 'Sub' type (reserved) can not be used in expression."),
    "action_as_written": (case('set req.http.x = "" + SET;'), 6, 24, "Symbol 'SET' type (action) can not be used in expression."),
    "action_dotted": (case("set req.http.x = set.foo;"), 6, 19, "Symbol 'set' type (action) can not be used in expression."),
    "action_called_as_written": (case("set req.http.x = IF();"), 6, 19, "Symbol 'IF' type (action) can not be used in expression."),
    # a BODY variable read: typed BODY, refused by its context (before: refused at once, at the name)
    "body_in_string": ('vcl 4.1;\nbackend default none;\nsub vcl_synth {\n\tset resp.http.x = resp.body;\n}\n', 4, 29,
                       "Cannot convert BODY to STRING."),
    "body_in_concat": ('vcl 4.1;\nbackend default none;\nsub vcl_synth {\n\tset resp.http.x = "a" + resp.body;\n}\n', 4, 35,
                       "Cannot convert BODY to STRING."),
    "body_in_bool": ('vcl 4.1;\nbackend default none;\nsub vcl_synth {\n\tif (resp.body) {}\n}\n', 4, 6,
                     "Expression has type BODY, expected BOOL"),
    "body_compare": ('vcl 4.1;\nbackend default none;\nsub vcl_synth {\n\tif (resp.body == "a") {}\n}\n', 4, 16,
                     "Operator == not possible on BODY"),
    # a number without a unit where BYTES are wanted: VCC quotes the token after it (before: the number)
    # a constant string where a REGEX is wanted is a REGEX to the operators (before: STRING)
    "regsub_regex_product": (case('set req.http.x = regsub(req.url, "a" * 2, "b");'), 6, 39,
                             "Operator * not possible on type REGEX."),
    "regsub_regex_sum_product": (case('set req.http.x = regsub(req.url, "a" + "b" * 2, "b");'), 6, 45,
                                 "Operator * not possible on type REGEX."),
    "regsub_regex_minus": (case('set req.http.x = regsub(req.url, "a" - "b", "b");'), 6, 39, "REGEX - REGEX not possible."),
    "regex_paren_product": (case('if (req.url ~ ("a" * 2)) {}'), 6, 21, "Operator * not possible on type REGEX."),
    "blob_in_bool": (case("if (:aGk=:) {}"), 6, 6, "Expression has type BLOB, expected BOOL"),
    "bytes_int_no_unit": (case('set req.http.x = std.bytes("x", 10);'), 6, 36, "Expected BYTES unit (B, KB, MB...) got ')'"),
    "bytes_real_no_unit": (case('set req.http.x = std.bytes("x", 1.5 );'), 6, 38, "Expected BYTES unit (B, KB, MB...) got ')'"),
    "bytes_no_unit_next_line": (case('set req.http.x = std.bytes("x", 10\n\t);'), 7, 2, "Expected BYTES unit (B, KB, MB...) got ')'"),
    "bytes_no_unit_comment": (case('set req.http.x = std.bytes("x", 10 /* c */ , 1);'), 6, 45,
                              "Expected BYTES unit (B, KB, MB...) got ','"),
    "var_property_deep": (case("set req.http.x = req.url.foo.bar;"), 6, 27, "Unknown property 'foo' for type STRINGS"),
    "time_property": (case("set req.http.x = now.foo;"), 6, 23, "Unknown property 'foo' for type TIME"),
})
MARKS_MORE = {"quoted_header_in_40": ('vcl 4.0;\nbackend default none;\nsub vcl_recv {\n\tset req.http.x = req.http."q";\n}\n', 3),
              "reserved_dotted": (case("set req.http.x = acl.foo;"), 3),
              "var_property": (case("set req.http.x = req.url.foo;"), 3),
              "http_property": (case("set req.http.x = req.nope;"), 4),
              "object_type_value": (case("set req.http.x = directors.round_robin;"), 9)}
CASES["quoted_header_in_40"] = ('vcl 4.0;\nbackend default none;\nsub vcl_recv {\n\tset req.http.x = req.http."q";\n}\n',
                                4, 28, "Quoted headers are available for VCL >= 4.1.")
COMPILES.update({
    "blob_literal_arg": BLOB + "set req.http.x = blob.encode(blob=:aGk=:);\n}\n",
    "blob_literal_string": case("set req.http.x = :aGk=:;"),
    "probe_lower": decl("set req.http.x = p.lower();"),
    "probe_paren_lower": decl("set req.http.x = (p).lower();"),
    "probe_compare": decl("if (p == p) {}"),
    "probe_default_compare": decl("if (p == default) {}").replace("sub foo", 'probe default { .url = "/"; }\nsub foo'),
    "default_resolve": decl("set req.backend_hint = default.resolve();"),
    "backend_resolve": decl("set req.backend_hint = b.resolve();"),
    "var_upper_case_method": decl("set req.http.x = req.url.UPPER();"),
})

# name -> (source, width of the mark under the reported place), as varnishd -C 7.1.1 marks it
MARKS = {
    **MARKS_MORE,
    "var_unknown_method": (case("set req.http.x = req.url.foo();"), 3),
    "spaced_duration_unit_unknown": (case("set req.ttl = 10 xyz;"), 3),
    "spaced_duration_unit_dotted": (case("set req.ttl = 2 req.url;"), 3),
    "method_unknown": (case("set req.http.x = rr.nope();").replace(*RR), 4),
    "object_as_call": (case("set req.http.x = directors.round_robin();"), 9),
    "time_var_lower": (case("set req.http.x = now.lower();"), 5),
    "ip_var_upper": (case("set req.http.x = client.ip.UPPER();"), 5),
}

@pytest.mark.parametrize("name", sorted(COMPILES))
def test_compiles(name):
    compile_vcl(COMPILES[name], f"{name}.vcl")


@pytest.mark.skipif(VARNISHD is None, reason="varnishd not installed")
def test_compiles_with_varnishd():
    with tempfile.TemporaryDirectory(dir="/tmp") as tmp:
        os.chmod(tmp, 0o755)

        def refused(name: str) -> bool:
            path = Path(tmp) / f"{name}.vcl"
            path.write_text(COMPILES[name])
            path.chmod(0o644)
            return subprocess.run([VARNISHD, "-C", "-f", str(path)], capture_output=True, timeout=60).returncode != 0

        with ThreadPoolExecutor(4) as pool:
            failed = [name for name, bad in zip(sorted(COMPILES), pool.map(refused, sorted(COMPILES)), strict=True) if bad]
    assert failed == []


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


def value(stmt: str) -> str | None:
    compiled = compile_vcl(case(stmt), "value.vcl")
    req = HttpMessage("GET", "/")
    compiled.subs["vcl_recv"](Context(method="vcl_recv", req=req, vcl=compiled))
    return req.headers.get("x")


# (expression, value): recorded from varnishd 7.1.1 (a .vtc setting resp.http.* in vcl_synth)
MINUS_VALUES = [
    # '-' before anything but a number negates the whole rest of the expression: -(x + 5)
    ('-std.integer("2", 0) + 5', "-7"), ("-(1) + 5", "-6"), ("-(2) * 3 + 1", "-7"),
    ('-std.duration("2s", 0s) + 5s', "-7.000"), ("std.round(-(1.5) + 4)", "-6.000"), ('"x" + -(1) + 5', "x-6"),
    ("7 - -(2) + 1", "10"), ("3 * -(1 + 1)", "-6"), ("10 / -(4)", "-2"),
    # before a number it is the number's sign
    ("-1 + 5", "4"), ("3 - -2", "5"), ("-2 * 3 + 1", "-5"), ("1.5 * -2", "-3.000"), ("1s * -2", "-2.000"),
    # C negates BOOL and BYTES too
    ("-true", "true"), ("-false", "false"), ('"x" + -true', "xtrue"), ('-std.bytes("1k", 0B)', "-1024"),
]


@pytest.mark.parametrize("expr, want", MINUS_VALUES)
def test_unary_minus_values(expr, want):
    assert value(f"set req.http.x = {expr};") == want


@pytest.mark.parametrize("stmt", ['set req.http.x = -"a";', "set req.http.x = -client.ip;",
                                  "set req.http.x = -req.backend_hint;", "set req.http.x = -req.url;"])
def test_unary_minus_on_a_pointer_type_is_refused(stmt):
    """VCC passes these on as -(x), and varnishd's C compiler refuses them (varnishd -C exits 2); we
    refuse them at the '-'."""
    with pytest.raises(VCLError) as info:
        compile_vcl(case(stmt), "neg.vcl")
    assert info.value.message.startswith("Operator - not possible on type ")
    assert (info.value.line, info.value.col) == (6, 19)


@pytest.mark.parametrize("expr, want", [
    ('std.ip("10.0.0.1", client.ip) + "1.2.3.4:80"', "10.0.0.11.2.3.4:80"),   # a string, not an IP constant
    ("std.round(10 * 1.5)", "15.000"),                                           # 10 read as REAL
    ("1.5 m", "90.000"), ('std.bytes("x", 10 KB)', "10240"), ('std.bytes("x", 2 mb)', "2097152"), ("10 ms", "0.010"),
    ('std.real("1.5", 0) * 2', "3.000"),
])
def test_string_and_real_context_values(expr, want):
    """Values recorded from varnishd 7.1.1: the expected type flows into each operand."""
    assert value(f"set req.http.x = {expr};") == want


def test_enum_choices_are_listed_as_varnishd_lists_them():
    with pytest.raises(VCLError) as info:
        compile_vcl(BLOB + 'set req.http.x = blob.encode(NOPE, blob=blob.decode(encoded="ab"));\n}\n', "e.vcl")
    assert "\n\tIDENTITY\n\tBASE64\n\tBASE64URL\n\tBASE64URLNOPAD\n\tBASE64CF\n\tHEX\n\tURL" in str(info.value)


def test_enum_default_written_in_capitals():
    compiled = compile_vcl(BLOB + 'set req.http.x = blob.encode(HEX, DEFAULT, blob.decode(encoded="ab"));\n'
                           'set req.http.y = blob.encode(HEX, UPPER, blob.decode(encoded="ab:"));\n}\n', "b.vcl")
    req = HttpMessage("GET", "/")
    compiled.subs["vcl_recv"](Context(method="vcl_recv", req=req, vcl=compiled))
    assert (req.headers.get("x"), req.headers.get("y")) == ("6162", "61623A")     # varnishd 7.1.1


def test_regex_argument_compiled_as_a_regex():
    compiled = compile_vcl(COOKIE + 'cookie.parse("a=1; b=2; ab=3");\ncookie.keep_re("^a");\n'
                           "set req.http.x = cookie.get_string();\n}\n", "ck.vcl")
    req = HttpMessage("GET", "/")
    compiled.subs["vcl_recv"](Context(method="vcl_recv", req=req, vcl=compiled))
    assert req.headers.get("x") == "a=1; ab=3;"        # varnishd 7.1.1


def test_string_plus_in_a_bool_context():
    assert value('if (req.url + "x" == "/x") { set req.http.x = "yes"; }') == "yes"


@pytest.mark.skipif(VARNISHD is None, reason="varnishd not installed")
def test_every_case_is_what_varnishd_reports():
    assert vcc_mismatches(CASES) == {}



def test_glued_duration_units_are_bytes_where_bytes_are_wanted():
    # varnishd 7.1.1 (a .vtc): VCC reads `10m` as 10 MB there
    assert value('set req.http.x = std.bytes("x", 10m);') == "10485760"
    assert value('set req.http.x = std.bytes("x", 1.5m);') == "1572864"


def notes(src: str) -> list[tuple[str, int | None, int | None, int | None]]:
    """The notes of the report on `src`: (text, line, column, marked width)."""
    with pytest.raises(VCLError) as info:
        compile_vcl(src, "n.vcl")
    report = str(info.value).splitlines()
    found = []
    for text, pos in info.value.notes:
        if pos is None:
            found.append((text, None, None, None))
            continue
        at = report.index(f"n.vcl:{pos.line}:{pos.col}: {text}")
        found.append((text, pos.line, pos.col, len(report[at + 2].strip())))
    return found


def test_the_call_a_missing_argument_was_in():
    """varnishd 7.1.1 names the call up to the token before the ')', or to the end of the call's line
    when the ')' is on another; a method call gets no such note. (line, column, marked width)"""
    assert notes(case('if (std.fnmatch("a",\n\t)) {}')) == [("While compiling function call:", 6, 6, 16)]
    assert notes(case("set req.http.x = std.toupper(\n);")) == [("While compiling function call:", 6, 19, 12)]
    assert notes(case("std.log(\n\t);")) == [("While compiling function call:", 6, 2, 8)]
    assert notes(case("set req.http.x = std.toupper();")) == [("While compiling function call:", 6, 19, 12)]
    assert notes(case("set req.backend_hint = h.backend();").replace(*RRH)) == []
    # a constructor's note has no place
    assert notes(CASES["constructor_argument_missing"][0]) == [("While compiling function call:", None, None, None)]


# varnishd 7.1.1 points at the token after the name (then adds "Expression has type
# directors.round_robin, expected STRING" for the instance)
CASES.update({
    "instance_in_string": (case("set req.http.x = rr;").replace(*RRH), 7, 21, "Cannot convert directors.round_robin to STRING."),
    "http_in_string": (case("set req.http.x = req;"), 6, 22, "Cannot convert HTTP to STRING."),
    "http_in_concat": (case('set req.http.x = "a" + req;'), 6, 28, "Cannot convert HTTP to STRING."),
    "instance_as_string_arg": (case("std.log(rr);").replace(*RRH), 7, 12, "Cannot convert directors.round_robin to STRING."),
})


@pytest.mark.parametrize("src, line, message", [
    # varnishd points at the '(' (col 15): ours at the method
    (case('std.log("a", (req.url).lower());'), 6, "Expected ')' got '('"),
])
def test_messages_whose_place_differs_from_varnishd(src, line, message):
    with pytest.raises(VCLError) as info:
        compile_vcl(src, "m.vcl")
    assert (info.value.message, info.value.line) == (message, line)


def test_unit_marks_span_the_unit_token():
    """varnishd 7.1.1 underlines the whole unit VCC refuses: `ms` of `10ms` where BYTES are wanted."""
    for stmt, caret in (('set req.http.x = std.bytes("x", 10ms);', "^~"), ('set req.http.x = std.bytes("x", 10KQ);', "^~")):
        with pytest.raises(VCLError) as info:
            compile_vcl(case(stmt), "u.vcl")
        assert str(info.value).splitlines()[2].strip() == caret


def test_a_string_after_a_number_is_refused_where_it_stands():
    """`10 "s"`: varnishd 7.1.1 reads the number and stops at the string (line 6, column 9)."""
    with pytest.raises(VCLError) as info:
        compile_vcl(case('if (10 "s") {}'), "u.vcl")
    assert (info.value.line, info.value.col) == (6, 9)



# name -> (source, marked width of the "While compiling function call:" note at line 6, column 19): VCC
# marks from the call's name to the end of the last token it read (comments and blanks not), to the end
# of the name's line when that token is on a later line (varnishd -C 7.1.1)
CALL_NOTES = {
    "regsub_none": (case("set req.http.x = regsub();"), 7),
    "regsub_blank": (case("set req.http.x = regsub(  );"), 7),
    "regsub_subject_comma_blank": (case('set req.http.x = regsub("a" ,  );'), 12),
    "regsub_one_blank": (case('set req.http.x = regsub("a"  );'), 10),
    "regsub_two": (case('set req.http.x = regsuball("a", "b");'), 18),
    "regsub_regex_comma": (case('set req.http.x = regsub("a", "b",);'), 16),
    "regsub_four_blank": (case('set req.http.x = regsub("a", "b" , "c" , "d");'), 21),
    "regsub_four_comment": (case('set req.http.x = regsub("a", "b" /* c */ ,"c", "d");'), 28),
    "regsub_four_next_line": (case('set req.http.x = regsub("a", "b", "c"\n\t,"d");'), 20),
    "regsub_two_lines": (case('set req.http.x = regsub("a",\n\t "b");'), 11),
    "missing_arg_blank": (case("set req.http.x = std.toupper(  );"), 12),
    "missing_arg_comment": (case("set req.http.x = std.toupper( /* x */ );"), 12),
    "missing_arg_after_blank": (case('set req.http.x = std.fnmatch("a" ,  );'), 17),
}


@pytest.mark.parametrize("name", sorted(CALL_NOTES))
def test_call_notes_mark_what_varnishd_marks(name):
    src, width = CALL_NOTES[name]
    assert notes(src) == [("While compiling function call:", 6, 19, width)]


@pytest.mark.skipif(VARNISHD is None, reason="varnishd not installed")
def test_call_notes_are_varnishds():
    """CALL_NOTES against `varnishd -C`: the note's place (VCC's Pos counts a tab as up to 8
    columns: Pos 26 is column 19 after one tab) and the '#'s under its first quoted line."""
    with tempfile.TemporaryDirectory(dir="/tmp") as tmp:
        os.chmod(tmp, 0o755)

        def marked(name: str) -> tuple[int, int, int]:
            path = Path(tmp) / f"{name}.vcl"
            path.write_text(CALL_NOTES[name][0])
            path.chmod(0o644)
            lines = subprocess.run([VARNISHD, "-C", "-f", str(path)], capture_output=True, text=True,
                                   timeout=60).stderr.splitlines()
            at = lines.index("While compiling function call:")
            where = next(m for ln in lines[at + 1:] if (m := re.search(r"Line (\d+) Pos (\d+)\)", ln)))
            mark = next(ln for ln in lines[at + 1:] if ln.startswith("-") and "#" in ln)
            return int(where.group(1)), int(where.group(2)), mark.count("#")

        with ThreadPoolExecutor(4) as pool:
            live = dict(zip(sorted(CALL_NOTES), pool.map(marked, sorted(CALL_NOTES)), strict=True))
    assert live == {name: (6, 26, width) for name, (_, width) in CALL_NOTES.items()}


@pytest.mark.parametrize("name", sorted(MARKS))
def test_marks_are_as_wide_as_varnishds(name):
    src, width = MARKS[name]
    with pytest.raises(VCLError) as info:
        compile_vcl(src, "m.vcl")
    assert len(str(info.value).splitlines()[2].strip()) == width


@pytest.mark.skipif(VARNISHD is None, reason="varnishd not installed")
def test_marks_are_varnishds():
    """MARKS against `varnishd -C`: the '#'s under the reported line."""
    with tempfile.TemporaryDirectory(dir="/tmp") as tmp:
        os.chmod(tmp, 0o755)

        def marked(name: str) -> int:
            path = Path(tmp) / f"{name}.vcl"
            path.write_text(MARKS[name][0])
            path.chmod(0o644)
            lines = subprocess.run([VARNISHD, "-C", "-f", str(path)], capture_output=True, text=True,
                                   timeout=60).stderr.splitlines()
            return next(ln for ln in lines if ln.startswith("-") and "#" in ln).count("#")

        with ThreadPoolExecutor(4) as pool:
            live = dict(zip(sorted(MARKS), pool.map(marked, sorted(MARKS)), strict=True))
    assert live == {name: width for name, (_, width) in MARKS.items()}


def test_tinykvm_without_import_in_any_case():
    """tinykvm may be used without its import line (our extension, with a warning, as its docs' examples
    do); like every vmod name it is read in any case."""
    src = 'vcl 4.1;\nbackend default none;\nsub vcl_recv {\n\tset req.http.x = TinyKVM.to_string("p");\n}\n'
    compiled = compile_vcl(src, "t.vcl")
    assert compiled.warnings == ["t.vcl: 'tinykvm' used without 'import tinykvm;', importing it"]


@pytest.mark.parametrize("stmt", ['set req.http.x = req.http."a b";', 'set req.http."a b" = "x";'])
def test_a_bad_quoted_header_name_has_no_place(stmt):
    """varnishd -C 7.1.1 prints "Invalid character ' ' in header name." and no position."""
    with pytest.raises(VCLError) as info:
        compile_vcl(case(stmt), "h.vcl")
    assert (str(info.value), info.value.pos) == ("Invalid character ' ' in header name.", None)


def test_a_property_of_a_storage_named_by_the_command_line():
    """`-s big=malloc`: storage.big is a STEVEDORE (varnishd -C -s big=malloc,1m 7.1.1: line 4, col 31)."""
    src = 'vcl 4.1;\nbackend default none;\nsub vcl_recv {\n\tset req.http.x = storage.big.foo;\n}\n'
    with pytest.raises(VCLError) as info:
        compile_vcl(src, "s.vcl", storages=["big"])
    assert (info.value.message, info.value.line, info.value.col) == ("Unknown property 'foo' for type STEVEDORE", 4, 31)
    with pytest.raises(VCLError) as info:      # called: the same words (as for storage.s0.foo())
        compile_vcl(src.replace("foo;", "foo();"), "s.vcl", storages=["big"])
    assert (info.value.message, info.value.line, info.value.col) == ("Unknown property 'foo' for type STEVEDORE", 4, 31)


@pytest.mark.parametrize("stmt", ["set req.ttl = 10KB;", "set req.ttl = 10 xyz;"])
def test_an_unknown_duration_unit_lists_the_legal_ones(stmt):
    """varnishd -C 7.1.1's two lines (BYTES glued on, and a word after the number)."""
    with pytest.raises(VCLError) as info:
        compile_vcl(case(stmt), "d.vcl")
    unit = "KB" if "KB" in stmt else "xyz"
    assert info.value.message == (f"Unknown duration unit '{unit}'\n"
                                  "Legal duration units are 'ms', 's', 'm', 'h', 'd', 'w' and 'y'")
