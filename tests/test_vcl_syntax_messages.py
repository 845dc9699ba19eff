"""Syntax errors in VCC's words. VCC is a recursive-descent parser that names the one token it
wanted; ours is LALR and knows a set: these are the places where the set is turned into VCC's
phrase. Found by compiling 800 token-level mutants of a realistic VCL with varnishd 7.1.1 and with
us (verdicts agree but for one documented case; the messages below differed before). The live test
re-checks each expected message with `varnishd -C` and skips without it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from vcl.compiler import compile_vcl
from vcl.errors import VCLError

VARNISHD = shutil.which("varnishd") or ("/usr/sbin/varnishd" if os.path.exists("/usr/sbin/varnishd") else None)

HEAD = 'vcl 4.1;\nbackend default { .host = "127.0.0.1"; .port = "8080"; }\n'
CASES = [
    ("sub vcl_recv {\n\t(req.url);\n}\n", "Expected an action, 'if', '{' or '}'"),
    ("sub vcl_recv {\n\tset req.url = \"a\";\n\t, ;\n}\n", "Expected an action, 'if', '{' or '}'"),
    ('backend b2 { .host = "127.0.0.1"; (port = "80"; }\n', "Expected '.' got '('"),
    ('backend b2 { .host = "127.0.0.1"; .probe = { .url = "/"; ; } }\n', "Expected '.' got ';'"),
    ('backend b2 b2 { .host = "127.0.0.1"; }\n', "Expected '{' got 'b2'"),
    ('acl a { "127.0.0.1"; ! ! "10.0.0.1"; }\nsub vcl_recv { if (client.ip ~ a) { return (pass); } }\n',
     "Expected CSTR got '!'"),
    ('backend b2 { .host = "127.0.0.1"+ .port = "80"; }\n', "Expected ';' got '+'"),
    ("sub vcl_recv {\n\tset req.url req.url;\n}\n", "Expected '=' got 'req'"),         # VCC: req . url
    ("sub vcl_recv {\n\tset req.ttl = 10s 10s;\n}\n", "Expected ';' got '10'"),       # VCC: 10 s
    ('sub vcl_recv {\n\tif ( (req.url ~ "x") {\n\t}\n}\n', "Expected ')' got '{'"),
    ('sub vcl_recv {\n\tif (req.url ~ "x" {\n\t}\n}\n', "Expected ')' got '{'"),
    ('sub vcl_recv {\n\tset req.url = regsuball(req.url "a", "b");\n}\n', "Expected ',' got '\"a\"'"),
    ('sub vcl_recv {\n\tset req.url = regsuball(req.url, "a", "b" "c");\n}\n', "Expected ')' got '\"c\"'"),
    ('sub vcl_recv {\n\tif (req.url) {\n\t} else set req.url = "a";\n}\n', "'else' must be followed by 'if' or '{'"),
    ('acl a { "10.0.0.0"/ /8; }\nsub vcl_recv { if (client.ip ~ a) { return (pass); } }\n', "Expected CNUM got '/'"),
    ('backend b2 { .host = "127.0.0.1"; .probe = = { .url = "/"; } }\n', "Expected '{' or name of probe, got '=' at"),
    # a statement made of a symbol that starts no statement; an action where a value is wanted
    ("sub clean {}\nsub vcl_recv {\n\tcall clean;\n\tclean;\n}\n", "Symbol cannot be used here."),
    ('acl local { "127.0.0.1"; }\nsub vcl_recv {\n\tif (client.ip ~ local) {}\n\tlocal(purge);\n}\n',
     "Symbol cannot be used here."),
    ("sub vcl_recv {\n\tdefault;\n}\n", "Symbol cannot be used here."),
    ("sub vcl_recv {\n\tset req.url = if(req.url);\n}\n", "Symbol 'if' type (action) can not be used in expression."),
    ('sub vcl_recv {\n\tset req.url = .(req.url, "a");\n}\n', "Unknown token '.' when looking for STRING"),
    # a ';' forgotten after a backend or probe field, after an import; an ACL without its '{'
    ('backend b2 { .host = "127.0.0.1" .port = "80"; }\n', "Expected ';' got '.'"),
    ('backend b2 { .host = "127.0.0.1"; .probe = { .url = "/" .timeout = 1s; } }\n', "Expected ';' got '.'"),
    ("import std\nsub vcl_recv { std.log(\"x\"); }\n", "Expected 'from path ...'"),
    ('acl local ( "127.0.0.1"; }\n', "Expected '{' got '('"),
    # names VCC already knows as something else
    ("sub if { }\n", "Symbol 'if' has wrong type (action), expected sub:"),
    ("sub acl { }\n", "Symbol 'acl' has wrong type (reserved), expected sub:"),
    ("sub now { }\n", "Symbol 'now' has wrong type (var), expected sub:"),
    ("sub true { }\n", "Symbol 'true' has wrong type (func), expected sub:"),
    ("import if;\n", "Symbol 'if' has wrong type (action), expected vmod:"),
    ("sub vcl_recv {\n\tset req.http.x = now + sub;\n}\n", "Symbol 'sub' type (reserved) can not be used in expression."),
    ('sub vcl_recv {\n\tset req.http.x = "" + set;\n}\n', "Symbol 'set' type (action) can not be used in expression."),
    # vmod arguments (1,370 calls of every std/blob/cookie/purge function with missing, extra, named,
    # duplicate and mistyped arguments: 85 messages differed, 2 now)
    ("import std;\nsub vcl_recv {\n\tif (std.ban()) {}\n}\n", "Argument 1 missing"),         # unnamed in the .vcc
    ('import std;\nsub vcl_recv {\n\tif (std.ban(spec="x")) {}\n}\n', "Unknown argument 'spec'"),
    ("import std;\nsub vcl_recv {\n\tset req.http.x = std.fileread();\n}\n", "Argument 2 missing"),  # PRIV_CALL is 1
    ("import blob;\nsub vcl_recv {\n\tset req.http.x = blob.length();\n}\n", "Argument 1 missing"),
    ('import blob;\nsub vcl_recv {\n\tset req.http.x = blob.encode(blob.decode(HEX, encoded="00"));\n}\n',
     "Wrong enum value.  Expected one of:\n\tIDENTITY\n\tBASE64\n\tBASE64URL\n\tBASE64URLNOPAD\n\tBASE64CF\n\tHEX\n\tURL"),
    ("import std;\nsub s { }\nsub vcl_recv {\n\tcall s;\n\tif (std.healthy(s)) {}\n}\n",
     "Symbol 's' can only be used as a SUB expression"),
    ('import std;\nsub vcl_recv {\n\tif (std.ban(="x")) {}\n}\n', "Unknown token '=' when looking for STRING"),
    # a trailing ',' is allowed in a vmod call's arguments only
    ('sub vcl_recv {\n\tset req.http.x = regsub(req.url, "a", "b",);\n}\n', "Expected ')' got ','"),
    ('sub vcl_recv {\n\treturn (synth(200, "x",));\n}\n', "Expected ')' got ','"),
    # a statement keyword VCC parses as such wants its '(' (not "Symbol not found: 'if'")
    ('sub vcl_recv {\n\tif "x" (req.url) {}\n}\n', "Expected '(' got '\"x\"'"),
    ('sub vcl_recv {\n\tif (req.url) {} elsif "x" (req.url) {}\n}\n', "Expected '(' got '\"x\"'"),
    ('sub vcl_synth {\n\tsynthetic = "x";\n}\n', "Expected '(' got '='"),
    ('sub vcl_recv {\n\thash_data "x";\n}\n', "Expected '(' got '\"x\"'"),
    ('sub vcl_recv {\n\telsif "x" (req.url) {}\n}\n', "Symbol not found: 'elsif'"),
    # a vmod call: VCC wants a ',' after each argument not followed by its ')', even the last
    ('import std;\nsub vcl_recv {\n\tset req.http.x = std.integer(req.http.y 0);\n}\n', "Expected ',' got '0'"),
    ('import std;\nsub vcl_recv {\n\tset req.http.x = std.tolower(req.http.y 0);\n}\n', "Expected ',' got '0'"),
    ('import std;\nsub vcl_recv {\n\tset req.ttl = std.duration(req.http.y, 1h;\n}\n', "Expected ',' got ';'"),
    # a function's name alone, where VCC wants its '(' (not the ';'); a value followed by another
    ('import std;\nsub vcl_recv {\n\tset req.http.x = std.integer)req.http.y, 0);\n}\n', "Expected '(' got ')'"),
    ('sub vcl_recv {\n\tset req.url = regsuball)req.url, "a", "b");\n}\n', "Expected '(' got ')'"),
    ("sub vcl_backend_response {\n\tset beresp.http.x = now now + 1m;\n}\n", "Expected ';' got 'now'"),
    # a declaration where a statement goes (a sub left open): VCC refuses the name after the keyword
    ('sub vcl_recv {\n\tif (req.url) {\n\t\tset req.url = "a";\n\t}\nsub vcl_deliver {\n}\n',
     "Symbol cannot be used here."),
    # the match operator's right side: an ACL after an IP, a REGEX after anything else
    ('acl local { "127.0.0.1"; }\nsub vcl_recv {\n\tif (client.ip ~  && req.url) {}\n\tif (client.ip ~ local) {}\n}\n',
     "Unknown token '&&' when looking for ACL"),
    ('sub vcl_recv {\n\tif (server.ip !~ {) {}\n}\n', "Unknown token '{' when looking for ACL"),
    ('sub vcl_recv {\n\tif (req.url ~ ;) {}\n}\n', "Unknown token ';' when looking for REGEX"),
    ('sub vcl_recv {\n\tset req.url = regsuball(req.url, , "");\n}\n', "Unknown token ',' when looking for REGEX"),
    ("sub sub vcl_recv {\n}\n", "Symbol 'sub' has wrong type (reserved), expected sub:"),
    ("sub set vcl_recv {\n}\n", "Symbol 'set' has wrong type (action), expected sub:"),
    ('sub vcl_recv {\n\tset req.url = "a";\n}\n* vcl_deliver {\n}\n',
     "Expected one of\n\t'acl', 'sub', 'backend', 'probe', 'import',  or 'vcl'\nFound: '*' at"),
    # a function's name used as a value: VCC wants its '(' and names the token that follows
    ('import std;\nsub vcl_recv {\n\tif (std.healthy) {}\n}\n', "Expected '(' got ')'"),
    ('import std;\nsub vcl_recv {\n\tif (std.tolower == "a") {}\n}\n', "Expected '(' got '=='"),
    ('import std;\nsub vcl_recv {\n\tset req.http.x = std.tolower\n\t# why\n\t+ "a";\n}\n', "Expected '(' got '+'"),
    ("sub vcl_recv {\n\tset req.http.x = regsub;\n}\n", "Expected '(' got ';'"),
    ('import std;\nsub vcl_recv {\n\tset req.http.x = std.nosuch;\n}\n', "Symbol not found: 'std.nosuch'"),
    # set/unset of a name VCC knows as something else than a variable, named with its kind
    ('sub vcl_recv {\n\tset set req.url = "a";\n}\n', "Symbol 'set' has wrong type (action), expected var:"),
    ('sub vcl_recv {\n\tunset sub req.http.x;\n}\n', "Symbol 'sub' has wrong type (reserved), expected var:"),
    ('import std;\nsub vcl_recv {\n\tset std req.url = "a";\n}\n', "Symbol 'std' has wrong type (vmod), expected var:"),
    ('acl local { "127.0.0.1"; }\nsub vcl_recv {\n\tif (client.ip ~ local) {}\n\tset local = "a";\n}\n',
     "Symbol 'local' has wrong type (acl), expected var:"),
    ('sub s {}\nsub vcl_recv {\n\tcall s;\n\tunset s;\n}\n', "Symbol 's' has wrong type (sub), expected var:"),
    ('probe p { .url = "/"; }\nbackend b1 { .host = "127.0.0.1"; .probe = p; }\nsub vcl_recv {\n\tset b1 = "a";\n}\n',
     "Symbol 'b1' has wrong type (backend), expected var:"),
    ('import directors;\nsub vcl_init {\n\tnew d = directors.round_robin();\n}\n'
     'sub vcl_recv {\n\tset d = "a";\n\tset req.backend_hint = d.backend();\n}\n',
     "Symbol 'd' has wrong type (instance), expected var:"),
    ('import std;\nsub vcl_recv {\n\tset std.log = "a";\n}\n', "Symbol 'std.log' has wrong type (func), expected var:"),
    ("sub vcl_recv {\n\tset default = \"a\";\n}\n", "Symbol 'default' has wrong type (func), expected var:"),
    # a probe's .url field with no string
    ('backend b2 { .host = "127.0.0.1"; .probe = { .url = ; } }\n', "Expected CSTR got ';'"),
    ('backend b2 { .host = "127.0.0.1"; .probe = { .url = = "/"; } }\n', "Expected CSTR got '='"),
    # a number followed by a word: VCC reads a duration unit there, before any later syntax error
    ("sub vcl_recv {\n\tset req.ttl = 1mif\n}\n", "Unknown duration unit 'mif'\nLegal duration units are 'ms', 's', 'm', 'h', 'd', 'w' and 'y'"),
    ('import std;\nsub vcl_recv {\n\tset req.http.x = std.integer(req.http.y, 0local;\n}\n',
     "Unknown duration unit 'local'\nLegal duration units are 'ms', 's', 'm', 'h', 'd', 'w' and 'y'"),
    ("sub vcl_recv {\n\tset req.ttl = 10s * 2req.url;\n}\n", "Unknown duration unit 'req'\nLegal duration units are 'ms', 's', 'm', 'h', 'd', 'w' and 'y'"),
    ("sub vcl_recv {\n\tset req.ttl = 10s * 2 req.url\n}\n", "Unknown duration unit 'req'\nLegal duration units are 'ms', 's', 'm', 'h', 'd', 'w' and 'y'"),
]

# and what compiles
ACCEPTED = [
    'import std;\nsub vcl_recv {\n\tstd.log("a",);\n\tset req.http.x = std.integer(req.http.y, 0,);\n}\n',
]


@pytest.mark.parametrize("body", ACCEPTED)
def test_accepted_as_varnishd_accepts(body):
    compile_vcl(HEAD + body, "a.vcl")


@pytest.mark.parametrize("body,message", CASES)
def test_syntax_errors_in_vccs_words(body, message):
    with pytest.raises(VCLError) as err:
        compile_vcl(HEAD + body, "s.vcl")
    assert err.value.message == message


@pytest.mark.skipif(VARNISHD is None, reason="varnishd not installed")
def test_recorded_messages_are_varnishds():
    with tempfile.TemporaryDirectory(dir="/tmp") as tmp:
        os.chmod(tmp, 0o755)

        def says(item: tuple[int, tuple[str, str]]) -> bool:
            i, (body, message) = item
            path = Path(tmp) / f"s{i}.vcl"
            path.write_text(HEAD + body)
            path.chmod(0o644)
            done = subprocess.run([VARNISHD, "-C", "-f", str(path)], capture_output=True, text=True, timeout=60)
            return f"\n{message}\n" in done.stderr

        def compiles(item: tuple[int, str]) -> bool:
            i, body = item
            path = Path(tmp) / f"a{i}.vcl"
            path.write_text(HEAD + body)
            path.chmod(0o644)
            return subprocess.run([VARNISHD, "-C", "-f", str(path)], capture_output=True, timeout=60).returncode == 0

        with ThreadPoolExecutor(4) as pool:
            agree = list(pool.map(says, enumerate(CASES)))
            accepted = list(pool.map(compiles, enumerate(ACCEPTED)))
    assert all(agree), [case for case, ok in zip(CASES, agree, strict=True) if not ok]
    assert all(accepted), [body for body, ok in zip(ACCEPTED, accepted, strict=True) if not ok]
