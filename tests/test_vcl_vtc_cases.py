"""Fixes found by running Varnish's own test cases: each test pins one behaviour those cases need."""

from __future__ import annotations

import pytest

from vcl.compiler import compile_vcl
from vcl.errors import VCLError
from vcl.regex import Regex, regsub
from vcl.runtime import IP, Context, Headers, HttpMessage, VCLFailure

HEAD = "vcl 4.1;\nimport std;\nbackend default none;\n"


def compile_(body: str):
    return compile_vcl(HEAD + body, "t.vcl")


def backend_ctx(method: str, **extra) -> Context:
    ctx = Context(method=method, hash_parts=[])
    ctx.bereq = HttpMessage("GET", "/", "HTTP/1.1", headers=Headers([]))
    ctx.beresp = HttpMessage(status=200, reason="OK", headers=Headers([]))
    for k, v in extra.items():
        setattr(ctx, k, v)
    return ctx


def test_beresp_was_304_reads_the_fetch_flag():
    vcl = compile_("sub vcl_backend_response { set beresp.http.w = beresp.was_304; }")
    for flag, text in ((True, "true"), (False, "false")):
        ctx = backend_ctx("vcl_backend_response", was_304=flag)
        vcl.subs["vcl_backend_response"](ctx)
        assert ctx.beresp.headers.get("w") == text


def test_return_arguments_that_are_variables_are_read_per_request():
    # Used to be hoisted into a load-time constant, which referenced ctx outside any function.
    vcl = compile_("sub vcl_deliver { return (synth(resp.status, resp.reason)); }")
    ctx = Context(method="vcl_deliver", hash_parts=[])
    ctx.resp = HttpMessage(status=500, reason="VCL", headers=Headers([]))
    action = vcl.subs["vcl_deliver"](ctx)
    assert (action.name, tuple(action.args)) == ("synth", (500, "VCL"))


def test_backend_none_takes_the_capitalised_spelling_vcc_takes():
    assert compile_vcl("vcl 4.1;\nbackend bad None;\n", "t.vcl").default_backend is None
    with pytest.raises(VCLError):
        compile_vcl("vcl 4.1;\nbackend bad NONE;\n", "t.vcl")


@pytest.mark.parametrize("const, addr, port", [
    ("1.2.3.4", "1.2.3.4", "80"),
    ("1.2.3.4:8000", "1.2.3.4", "8000"),
    ("1.2.3.4 8000", "1.2.3.4", "8000"),
    ("[::1]", "::1", "80"),
    ("[::1]:8000", "::1", "8000"),
])
def test_ip_constants_may_carry_a_port(const, addr, port):
    vcl = compile_(f'sub vcl_deliver {{ set resp.http.a = std.ip("..", "{const}");'
                   f' set resp.http.p = std.port("{const}"); }}')
    ctx = Context(method="vcl_deliver", hash_parts=[])
    ctx.resp = HttpMessage(status=200, reason="OK", headers=Headers([]))
    vcl.subs["vcl_deliver"](ctx)
    assert (ctx.resp.headers.get("a"), ctx.resp.headers.get("p")) == (addr, port)


@pytest.mark.parametrize("const", ["::1::2", "1.2.3.4::80"])
def test_bad_ip_constants_are_load_errors(const):
    with pytest.raises(VCLError, match="could not be resolved to an IP address"):
        compile_(f'sub vcl_deliver {{ set resp.http.a = std.ip("..", "{const}"); }}')


def test_stevedores_convert_to_their_symbol_and_compare_by_name():
    vcl = compile_("sub vcl_backend_response {\n set beresp.http.s = storage.s0;\n"
                   " set beresp.http.d = beresp.storage;\n"
                   " if (beresp.storage == storage.Transient) { set beresp.http.t = \"yes\"; }\n}")
    # A name built at run time (not an interned literal) still compares equal.
    ctx = backend_ctx("vcl_backend_response", beresp_storage="".join(["Trans", "ient"]))
    vcl.subs["vcl_backend_response"](ctx)
    got = [ctx.beresp.headers.get(n) for n in ("s", "d", "t")]
    assert got == ["storage.s0", "storage.Transient", "yes"]


def test_storage_symbols_come_from_the_servers_storages():
    body = "sub vcl_backend_response { set beresp.storage = storage.big; }"
    compile_vcl(HEAD + body, "t.vcl", storages=["big"])
    with pytest.raises(VCLError, match="Symbol not found: 'storage.big'"):
        compile_(body)
    with pytest.raises(VCLError, match="Symbol not found: 'storage.s0'"):
        compile_vcl(HEAD + body.replace("big", "s0"), "t.vcl", storages=["big"])
    # Transient always exists.
    compile_vcl(HEAD + body.replace("big", "Transient"), "t.vcl", storages=["big"])


def _error(body: str) -> VCLError:
    with pytest.raises(VCLError) as info:
        compile_(body)
    return info.value


@pytest.mark.parametrize("body, message, line, col", [
    # The right side of ~ is where VCC looks for a REGEX.
    ('sub vcl_recv { if (req.url ~ ! "x") { return (pass); } }', "Unknown token '!' when looking for REGEX", 4, 30),
    # An unknown plain name where a BACKEND is wanted is an undefined backend.
    ("sub vcl_backend_fetch { set bereq.backend = s-1; }", "Undefined backend s-1, first reference:", 4, 45),
    ("sub vcl_backend_fetch { set bereq.backend = a.b; }", "Symbol not found: 'a.b'", 4, 45),
])
def test_vcc_messages_for_expressions(body, message, line, col):
    err = _error(body)
    assert (err.message, err.line, err.col) == (message, line, col)


ACL_USE = "\nsub vcl_recv { if (client.ip ~ a) { return (pass); } }"


@pytest.mark.parametrize("acl, message, col", [
    ('acl a { "10.1.2.3"/33; }', "Too wide mask (/33) for IPv4 address", 20),
    ('acl a { "1::2"/129; }', "Too wide mask (/129) for IPv6 address", 16),
    ('acl a { "...com"; }', "DNS lookup(...com): Name or service not known", 9),
    ('acl a { "10.1..2"; }', "DNS lookup(10.1..2): Name or service not known", 9),
    ('acl a { "10.0.1.0/1bc"; }', ".../mask is not numeric.", 9),
    ('acl a { "10.0.1.0/22" / 22; }', "/mask only allowed once.", 23),
    ('acl a { ( "10.1.2"; }', "Expected ')' got ';'", 19),
    ('acl a { "10.1.2" ); }', "Expected ';' got ')'", 18),
    ('acl a + log { "10.1.2"; }', "Expected a flag at:", 7),
    ('acl a +foobar { "10.1.2"; }', "Unknown ACL flag:", 8),
    ('acl a { "1.2.3.4"; !"1.2.3.4"; }', "Conflicting ACL entries:", 9),
])
def test_acl_errors_like_vcc(acl, message, col):
    err = _error(acl + ACL_USE)
    assert (err.message, err.line, err.col) == (message, 4, col)


def test_acl_network_notation_and_optional_entries():
    # "10.1.2" is 10.1.2.0/24; parenthesised entries that do not resolve are left out.
    vcl = compile_('acl a {\n "10.1.2"/25;\n ! "10.1.3";\n ("...com" / 22);\n (!"...com");\n'
                   ' "1.2.3.4"/31;\n "1.2.3.4"/31;\n "10.9"/16;\n}' + ACL_USE)
    acl = vcl.acls["a"]
    assert acl.match(IP("10.1.2.100")) and not acl.match(IP("10.1.2.200"))
    assert acl.match(IP("10.9.200.1")) and acl.match(IP("1.2.3.5")) and not acl.match(IP("10.1.3.1"))


@pytest.mark.parametrize("cond, message", [
    ('storage.Transient.free_space > 4 "X"', "Expected BYTES unit (B, KB, MB...) got '\"X\"'"),
    ("storage.Transient.free_space > 4 MS", "Unknown BYTES unit of measurement ([KMGTP][B])'MS'"),
    ("req.ttl > 4 X", "Unknown duration unit 'X'\nLegal duration units are 'ms', 's', 'm', 'h', 'd', 'w' and 'y'"),
])
def test_a_spaced_unit_is_read_by_the_type_wanted(cond, message):
    assert _error(f"sub vcl_recv {{ if ({cond}) {{ }} }}").message == message


def test_bytes_units_in_any_case_with_a_space():
    vcl = compile_("sub vcl_recv { set req.http.x = storage.Transient.used_space + 1 kb + 1 tb; }")
    ctx = Context(method="vcl_recv", hash_parts=[])
    ctx.req = HttpMessage("GET", "/", "HTTP/1.1", headers=Headers([["Host", "h"]]))
    vcl.subs["vcl_recv"](ctx)   # no server: used_space reads as 0
    assert ctx.req.headers.get("x") == str(1024 + 1024 ** 4)
    # 1 PB is past VRT_INTEGER_MAX: it has no string form, and the task fails (as varnishd 7.1)
    vcl = compile_("sub vcl_recv { set req.http.x = storage.Transient.used_space + 1 kb + 1 pb; }")
    with pytest.raises(VCLFailure, match=r"^INT overflow converting to string \(4000000000400\)$"):
        vcl.subs["vcl_recv"](ctx)


def test_quoted_header_names():
    vcl = compile_('sub vcl_recv { return (synth(200)); }\nsub vcl_synth {\n set resp.http."123" = "456";\n'
                   ' set resp.http.{"!!!"} = resp.http."123";\n set resp.http."""resp.http.foo""" = "bar";\n'
                   ' set resp.http.bar = resp.http."resp.http.foo".upper();\n std.collect(resp.http."x.y");\n}')
    ctx = Context(method="vcl_synth", hash_parts=[])
    ctx.resp = HttpMessage(status=200, reason="OK", headers=Headers([["x.y", "a"], ["x.y", "b"]]))
    vcl.subs["vcl_synth"](ctx)
    got = [ctx.resp.headers.get(n) for n in ("123", "!!!", "resp.http.foo", "bar", "x.y")]
    assert got == ["456", "456", "bar", "BAR", "a, b"]


@pytest.mark.parametrize("header, message", [
    ('{"line\nbreak"}', "Invalid character '\\n' in header name."),
    ('"a b"', "Invalid character ' ' in header name."),
    ('"\u00e9"', "Invalid character '\\303' in header name."),
])
def test_bad_quoted_header_names(header, message):
    assert _error(f'sub vcl_recv {{ set req.http.{header} = "x"; }}').message == message


def test_quoted_header_names_need_vcl_4_1():
    with pytest.raises(VCLError, match="Quoted headers are available for VCL >= 4.1"):
        compile_vcl('vcl 4.0;\nbackend be none;\nsub vcl_recv { set req.http."q" = "x"; }', "t.vcl")
    with pytest.raises(VCLError, match="Expected '=' got '.'"):
        compile_('sub vcl_recv { set req."http".wrong-quote = "x"; }')


def test_nested_block_comment_is_an_error():
    with pytest.raises(VCLError) as info:
        compile_vcl('vcl 4.1;\nbackend be none;\n/* foo\n   /* bar\n*/\nsub vcl_recv { set req.http.x = "/* a */"; }',
                    "t.vcl")
    err = info.value
    assert (err.message, err.line, err.col) == ("/* ... */ comment contains /*", 3, 1)
    assert err.notes[0][1].line == 4 and err.notes[0][1].col == 4
    # "/*" inside a string or a // comment is fine.
    compile_('// a /* b\nsub vcl_recv { set req.http.x = "/* a /* b */"; }')


@pytest.mark.parametrize("sub, expected", [
    ("\\0\\0", "_bararf_"),               # on "ar"
    ("\\4\\3\\2p", "_frap_"),
    ("\\4\\\\\\3\\2p", "_f\\rap_"),       # \\ is one backslash
    ("\\4\\&\\3\\2p", "_f&rap_"),         # \& is a literal &
    ("\\4\\&\\3\\2p\\", "_f&rap\\_"),     # a trailing backslash stays
])
def test_regsub_replacement_like_vrt_regsub(sub, expected):
    pattern = "ar" if sub == "\\0\\0" else "(b)(a)(r)(f)"
    assert regsub(Regex(pattern), "_barf_", sub, False) == expected


@pytest.mark.parametrize("stmt, body", [
    ("synthetic(resp.http.blank);", "(null)"),
    ('synthetic("a" + resp.http.blank);', "a(null)"),
    ("synthetic(resp.http.blank); synthetic(resp.http.blank);", "(null)(null)"),
    ("set resp.body = resp.http.blank;", ""),
    ('set resp.body = "x"; set resp.body += resp.http.blank;', "x"),
])
def test_synthetic_prints_unset_strings_as_null(stmt, body):
    vcl = compile_(f"sub vcl_synth {{ {stmt} return (deliver); }}")
    ctx = Context(method="vcl_synth", hash_parts=[], synth_body=[])
    ctx.resp = HttpMessage(status=200, reason="OK", headers=Headers([]))
    vcl.subs["vcl_synth"](ctx)
    assert "".join(ctx.synth_body) == body


def test_backend_host_header_defaults_to_the_host_string():
    vcl = compile_vcl('vcl 4.1;\nbackend b { .host = "127.0.0.1"; .port = "8080"; }\n'
                      'backend c { .host = "localhost:81"; }\nbackend d { .host = "127.0.0.2"; .host_header = "x"; }\n'
                      "sub vcl_recv { set req.backend_hint = c; set req.backend_hint = d; }", "t.vcl")
    assert [vcl.backends[n].host_header for n in "bcd"] == ["127.0.0.1", "localhost:81", "x"]
    # The backend connects to the address VCC resolved, with the port the .host string named.
    assert (vcl.backends["c"].host, vcl.backends["c"].port) == ("127.0.0.1", "81")


@pytest.mark.parametrize("stmt, message, col", [
    ("std.log(;);", "Unknown token ';' when looking for STRING", 10),
    ("return (synth(;));", "Unknown token ';' when looking for INT", 16),
    ("if (req.url && ;) {}", "Unknown token ';' when looking for BOOL", 17),
    ('set req.http.x = "a" + !;', "Unknown token '!' when looking for STRING", 25),
    ("set req.ttl += ;", "Unknown token ';' when looking for DURATION", 17),
    ('set req.http.x = "a" + (1 + );', "Unknown token ')' when looking for INT", 30),
    ("if (req.url == ;) {}", "Unknown token ';' when looking for STRING", 17),
    ("if (!!true) {}", "Unknown token '!' when looking for BOOL", 7),
])
def test_a_missing_expression_names_the_type_vcc_wanted(stmt, message, col):
    err = _error(f"sub vcl_recv {{\n {stmt}\n}}")
    assert (err.message, err.line, err.col) == (message, 5, col)


@pytest.mark.parametrize("stmt", ["set req.url = req.http.foo;", 'set req.method = "";'])
def test_setting_a_request_line_field_empty_fails_the_task(stmt):
    vcl = compile_(f"sub vcl_recv {{ {stmt} }}")
    ctx = Context(method="vcl_recv", hash_parts=[])
    ctx.req = HttpMessage("GET", "/", "HTTP/1.1", headers=Headers([["Host", "h"]]))
    with pytest.raises(VCLFailure, match="to empty string is not allowed"):
        vcl.subs["vcl_recv"](ctx)
    assert ctx.req.url == "/" and ctx.req.method == "GET"


def test_vcl_4_0_proto_setter_also_refuses_empty():
    vcl = compile_vcl("vcl 4.0;\nbackend be none;\nsub vcl_deliver { set resp.proto = resp.http.nope; }", "t.vcl")
    ctx = Context(method="vcl_deliver", hash_parts=[])
    ctx.resp = HttpMessage(status=200, reason="OK", headers=Headers([]))
    with pytest.raises(VCLFailure):
        vcl.subs["vcl_deliver"](ctx)


def test_compiled_vcl_lists_the_labels_it_returns_to():
    vcl = compile_('sub vcl_recv { if (req.url == "/") { return (vcl(lblB)); } return (vcl(lblA)); }')
    assert vcl.labels == {"lblA", "lblB"}
    assert compile_("").labels == set()


def test_a_sum_of_string_constants_is_a_regex():
    vcl = compile_('sub vcl_recv { if (req.url ~ "^/a" + "b$") { return (synth(201)); }\n'
                   ' set req.url = regsub(req.url, "x" + "y", "z"); }')
    ctx = Context(method="vcl_recv", hash_parts=[])
    ctx.req = HttpMessage("GET", "/ab", "HTTP/1.1", headers=Headers([["Host", "h"]]))
    assert vcl.subs["vcl_recv"](ctx).args[0] == 201
    assert _error('sub vcl_recv { if (req.url ~ "a" + req.url) { } }').message == "Expected CSTR got 'req'"
    assert _error("sub vcl_recv { return(); }").message == "Expected ID got ')'"


def test_blob_in_string_context_is_base64_between_colons():
    vcl = compile_("sub vcl_hit { set req.http.h = req.hash; std.late_100_continue(true); }")
    ctx = Context(method="vcl_hit", hash_parts=[], hash=bytes(range(32)))
    ctx.req = HttpMessage("GET", "/", "HTTP/1.1", headers=Headers([["Host", "h"]]))
    vcl.subs["vcl_hit"](ctx)
    assert ctx.req.headers.get("h") == ":AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=:"
    # std.late_100_continue() may be called outside vcl_recv too, as varnishd 7.1 allows.
    compile_("sub vcl_backend_fetch { std.late_100_continue(true); }")


def test_backend_resolve_method_asks_the_director():
    class Director:
        def __init__(self, target):
            self.target = target

        def resolve(self, ctx):
            return self.target

    vcl = compile_vcl('vcl 4.1;\nbackend b { .host = "127.0.0.1"; }\n'
                      "sub vcl_recv { set req.backend_hint = req.backend_hint.resolve(); }", "t.vcl")
    ctx = Context(method="vcl_recv", hash_parts=[])
    ctx.req = HttpMessage("GET", "/", "HTTP/1.1", headers=Headers([["Host", "h"]]))
    ctx.backend_hint = Director(vcl.backends["b"])
    vcl.subs["vcl_recv"](ctx)
    assert ctx.backend_hint is vcl.backends["b"]


def test_std_deprecated_conversions_and_blobread(tmp_path):
    (tmp_path / "f").write_bytes(b"\x00ab")
    vcl = compile_("sub vcl_recv {\n set req.http.a = std.real2integer(2.5, 0) + \",\" + std.real2integer(-2.5, 0);\n"
                   " set req.http.b = std.time2integer(std.real2time(3.5, now), 0) + \",\" +"
                   " std.time2real(std.real2time(1.25, now), 0.0);\n"
                   f' set req.http.c = std.blobread("{tmp_path / "f"}");\n}}')
    ctx = Context(method="vcl_recv", hash_parts=[])
    ctx.req = HttpMessage("GET", "/", "HTTP/1.1", headers=Headers([["Host", "h"]]))
    vcl.subs["vcl_recv"](ctx)
    assert [ctx.req.headers.get(n) for n in "abc"] == ["3,-3", "4,1.250", ":AGFi:"]


def test_a_string_constant_in_bool_context_compiles_without_warnings():
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        vcl = compile_('sub vcl_recv { set req.hash_always_miss = "true"; }')
    ctx = Context(method="vcl_recv", hash_parts=[])
    ctx.req = HttpMessage("GET", "/", "HTTP/1.1", headers=Headers([["Host", "h"]]))
    vcl.subs["vcl_recv"](ctx)
    assert ctx.hash_always_miss is True


def test_return_vcl_label_must_exist_when_the_server_names_its_labels():
    body = "sub vcl_recv { return (vcl(lblA)); }"
    assert compile_vcl(HEAD + body, "t.vcl", labels=["lblA"]).labels == {"lblA"}
    compile_(body)      # labels unknown (cacheserver -C): not checked
    with pytest.raises(VCLError, match="Symbol not found: 'lblA'"):
        compile_vcl(HEAD + body, "t.vcl", labels=["other"])


@pytest.mark.parametrize("value, message", [
    ("1000000000000000", "Too many digits for integer."),
    ("1.1234", "Too many digits for real."),
    ("1234567890123.5", "Too many digits for real."),
])
def test_vcc_limits_on_number_literals(value, message):
    assert _error(f"sub vcl_recv {{ set req.http.x = {value}; }}").message == message


def test_number_literals_within_the_limits_and_no_remove_statement():
    compile_("sub vcl_recv { set req.http.x = 999999999999999 + 123456789012.5; set req.ttl = 1234567890123s; }")
    assert _error("sub vcl_recv { remove req.http.x; }").line == 4


@pytest.mark.parametrize("stmt, message, col", [
    ("remove req.http.x;", "Symbol not found: 'remove'", 2),
    ("foo.bar;", "Symbol not found: 'foo.bar'", 2),
    ("req.url;", "Symbol cannot be used here.", 9),
    ("std.log;", "Expected '(' got ';'", 9),
])
def test_a_bare_name_statement_is_reported_like_vcc(stmt, message, col):
    err = _error(f"sub vcl_recv {{\n {stmt}\n}}")
    assert (err.message, err.line, err.col) == (message, 5, col)


@pytest.mark.parametrize("text, message", [
    ("sub vcl_recv { /* x", "Unterminated /* ... */ comment, starting at"),
    ('sub vcl_recv { set req.http.x = {"abc; }', "Unterminated long-string, starting at"),
    ('sub vcl_recv { set req.http.x = """abc; }', "Unterminated long-string, starting at"),
    ('sub vcl_recv { set req.http.x = "abc; }', "Unterminated string, starting at"),
    ('sub vcl_recv { set req.http.x = "a" $ "b"; }', "Syntax error at"),
])
def test_lexical_errors_like_vcc(text, message):
    assert _error(text).message == message


@pytest.mark.parametrize("decl, message", [
    ('backend b2 { .path = "x.sock"; }', "Backend path: Must be an absolute path:"),
    ('backend b2 { .host = "127.0.0.1"; .path = "/x.sock"; }', "Address redefinition at:"),
    ('backend b2 { .host = "127.0.0.1"; .proxy_header = 3; }', ".proxy_header must be 1 or 2"),
    ('backend b2 { .host = "127.0.0.1"; .max_connections = -1; }', "Expected CNUM got '-'"),
    ('backend b2 { .host = "127.0.0.1"; .probe = { .url = "/"; .expected_response = 99; } }',
     "Must specify .expected_response with exactly three digits (100 <= x <= 999)"),
])
def test_backend_declaration_checks_like_vcc(decl, message):
    assert _error(decl + "\nsub vcl_recv { set req.backend_hint = b2; }").message == message


@pytest.mark.parametrize("decls, message", [
    ('acl b2 { "1.2.3.4"; }\nbackend b2 { .host = "127.0.0.1"; }', "Name 'b2' already defined."),
    ('backend b2 { .host = "127.0.0.1"; }\nbackend b2 { .host = "127.0.0.1"; }', "Backend 'b2' redefined."),
    ('import directors;\nbackend b2 { .host = "127.0.0.1"; }\nsub vcl_init { new b2 = directors.round_robin(); }',
     "Name 'b2' already defined."),
    ('import directors;\nsub vcl_init { new rr = directors.round_robin(); new rr = directors.round_robin(); }',
     "Instance 'rr' redefined."),
])
def test_name_clashes_like_vcc(decls, message):
    assert _error(decls).message == message


@pytest.mark.parametrize("text, message, col", [
    ("foo bar;", "Expected one of\n\t'acl', 'sub', 'backend', 'probe', 'import',  or 'vcl'\nFound: 'foo' at", 1),
    ('sub vcl_recv { std.log("a", "b"); }', "Expected ')' got '\"b\"'", 29),
    ("import directors;\nsub vcl_init { new rr = directors.round_robin(1); }", "Expected ')' got '1'", 47),
])
def test_more_syntax_messages_like_vcc(text, message, col):
    err = _error(text)
    assert (err.message, err.col) == (message, col)


@pytest.mark.parametrize("expr, expected", [
    ('std.real("1.23456") * 1000', "1234.000"),          # VNUM: three decimals at most
    ('std.duration("1.23456s") * 1000', "1234.000"),
    ('std.bytes(s="1.5", fallback=0B)', "0"),             # no fraction of a byte
    ('std.bytes(s="1.3k", fallback=0B)', "1331"),
    ('std.integer(duration=-1.9s)', "-1"),                 # toward zero
    ('std.integer(s="+5", fallback=-1)', "-1"),
    ('regsuball("baaac", "a*", "-")', "-b-c"),            # later matches may not be empty
    ('regsuball("abc", "", "-")', "-abc"),
    ('regsuball("abc", "$", "-")', "abc-"),
    ('std.toupper("a\u00e9")', "A\u00e9"),                # ASCII only
    ('"\u00c0B".lower()', "\u00c0b"),
    ('std.querysort("/?&")', "/?"),
    ('std.ip("::ffff:1.2.3.4", "0.0.0.0")', "1.2.3.4"),
])
def test_runtime_results_match_varnishd(expr, expected):
    vcl = compile_(f"sub vcl_synth {{ set resp.http.x = {expr}; }}")
    ctx = Context(method="vcl_synth", hash_parts=[])
    ctx.resp = HttpMessage(status=200, reason="OK", headers=Headers([]))
    vcl.subs["vcl_synth"](ctx)
    assert ctx.resp.headers.get("x") == expected


def test_a_none_backend_is_no_backend_and_transport_is_http1():
    vcl = compile_vcl("vcl 4.1;\nbackend be none;\nsub vcl_recv {\n set req.http.b = be;\n"
                      " set req.backend_hint = be;\n set req.http.t = req.transport;\n}", "t.vcl")
    ctx = Context(method="vcl_recv", hash_parts=[])
    ctx.req = HttpMessage("GET", "/", "HTTP/1.1", headers=Headers([["Host", "h"]]))
    ctx.backend_hint = object()
    vcl.subs["vcl_recv"](ctx)
    assert (ctx.req.headers.get("b"), ctx.backend_hint, ctx.req.headers.get("t")) == ("", None, "HTTP/1")


@pytest.mark.parametrize("expr", ["999999999999999 + 1", "999999999999.0 * 10", "1s * 999999999999.0 * 10"])
def test_numbers_too_big_for_a_string_fail_the_task(expr):
    vcl = compile_(f"sub vcl_synth {{ set resp.http.x = {expr}; }}")
    ctx = Context(method="vcl_synth", hash_parts=[])
    ctx.resp = HttpMessage(status=200, reason="OK", headers=Headers([]))
    with pytest.raises(VCLFailure, match="overflow"):
        vcl.subs["vcl_synth"](ctx)


@pytest.mark.parametrize("expr, expected", [
    ('std.integer("1000000000000000", 0)', "0"),
    ('std.integer("-999999999999999", 0)', "-999999999999999"),
    ('std.real("1000000000000", 0.0)', "0.000"),
    ('std.real("-999999999999.5", 0.0)', "-999999999999.500"),
])
def test_std_conversions_refuse_numbers_varnishd_cannot_hold(expr, expected):
    vcl = compile_(f"sub vcl_synth {{ set resp.http.x = {expr}; }}")
    ctx = Context(method="vcl_synth", hash_parts=[])
    ctx.resp = HttpMessage(status=200, reason="OK", headers=Headers([]))
    vcl.subs["vcl_synth"](ctx)
    assert ctx.resp.headers.get("x") == expected
