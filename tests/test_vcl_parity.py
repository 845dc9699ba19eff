"""Parity with VCC: each statement below is accepted or rejected exactly as `varnishd -C` (7.1.1)
does. The verdicts were recorded from varnishd; when varnishd is installed the live check re-runs it."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from vcl.compiler import compile_vcl
from vcl.errors import VCLError

HEAD = "vcl 4.1;\nimport std;\nbackend default none;\n"

# (subroutine, statement, accepted by varnishd 7.1.1 -C)
VCC_VERDICTS = [
    ('recv', 'set req.http.x = 1 + 2 * 3;', True),
    ('recv', 'set req.http.x = "a" + 1.5;', True),
    ('recv', 'set req.http.x = 1.5 + "a";', True),
    ('recv', 'if (1.5 + "a") {}', False),
    ('recv', 'set req.ttl = 1s * 2;', True),
    ('recv', 'set req.ttl = 2 * 1s;', False),
    ('recv', 'set req.ttl = 1s * 1.5;', True),
    ('recv', 'set req.ttl = 1s / 2;', True),
    ('recv', 'set req.ttl = 1s + 1;', False),
    ('recv', 'set req.ttl = 1s - 1s;', True),
    ('recv', 'set req.ttl = -1s;', True),
    ('recv', 'set req.ttl = -(1s);', True),
    ('recv', 'set req.grace = req.ttl;', True),
    ('recv', 'set req.http.x = now + 1h;', True),
    ('recv', 'set req.http.x = now - 1h;', True),
    ('recv', 'set req.http.x = now - now;', True),
    ('recv', 'set req.http.x = now + now;', True),
    ('recv', 'if (now > now - 1s) {}', True),
    ('recv', 'if (now == 1s) {}', False),
    ('recv', 'if (req.url) {}', True),
    ('recv', 'if (req.restarts) {}', True),
    ('recv', 'if (req.ttl) {}', True),
    ('recv', 'if (1.0) {}', False),
    ('recv', 'if (req.backend_hint) {}', True),
    ('recv', 'if (client.ip) {}', False),
    ('recv', 'if (req.url == req.method) {}', True),
    ('recv', 'if (req.url < "b") {}', True),
    ('recv', 'if (true == false) {}', True),
    ('recv', 'if (true < false) {}', False),
    ('recv', 'if (client.ip == server.ip) {}', True),
    ('recv', 'if (client.ip < server.ip) {}', False),
    ('recv', 'if (req.backend_hint == default) {}', True),
    ('recv', 'set req.backend_hint = default;', True),
    ('recv', 'set req.http.x = req.http.y + req.http.z;', True),
    ('recv', 'set req.http.x = req.restarts + req.esi_level;', True),
    ('recv', 'set req.url = 1;', True),
    ('recv', 'set req.url = true;', True),
    ('recv', 'set req.hash_always_miss = 1;', True),
    ('recv', 'set req.hash_always_miss = req.http.x;', True),
    ('recv', 'set req.hash_always_miss = 1.0;', False),
    ('recv', 'set req.ttl = 10;', False),
    ('recv', 'set req.ttl += 10s;', True),
    ('recv', 'set req.ttl *= 2;', True),
    ('recv', 'set req.ttl *= 1.5;', True),
    ('recv', 'set req.url += "x";', True),
    ('recv', 'set req.url -= "x";', False),
    ('recv', 'set req.http.x += "y";', True),
    ('recv', 'set req.http.x = std.integer("1", 0) * 1.5;', False),
    ('recv', 'set req.http.x = 1.5 * std.integer("1", 0);', True),
    ('recv', 'set req.http.x = 7 % 2;', True),
    ('recv', 'set req.http.x = 7.0 % 2;', False),
    ('recv', 'set req.http.x = 1s % 2;', False),
    ('recv', 'set req.http.x = std.real("1", 0) / 0.5;', True),
    ('recv', 'set req.http.x = 1 / 2.0;', False),
    ('recv', 'set req.http.x = (1 + 2) * 3;', True),
    ('recv', 'set req.http.x = ("a" + "b");', True),
    ('recv', 'set req.http.x = !true;', True),
    ('recv', 'set req.http.x = !req.http.y;', True),
    ('recv', 'set req.http.x = req.http.y && req.http.z;', True),
    ('recv', 'set req.http.x = 1 == 1 == true;', False),
    ('recv', 'if (req.url ~ "a" && req.url !~ "b" || !(req.url ~ "c")) {}', True),
    ('recv', 'if (client.ip ~ "1.2.3.4") {}', False),
    ('recv', 'if (req.http.x ~ req.url) {}', False),
    ('recv', 'set req.http.x = regsub(req.url, "a", req.http.y);', True),
    ('recv', 'set req.http.x = regsub(req.url, req.http.y, "b");', False),
    ('recv', 'set req.http.x = regsuball(1, "a", 2);', True),
    ('recv', 'std.log(1);', True),
    ('recv', 'std.log(req.http.x + 1);', True),
    ('recv', 'std.log();', False),
    ('recv', 'std.log("a", "b");', False),
    ('recv', 'std.collect(req.http.x, ",");', True),
    ('recv', 'std.collect(req.url);', False),
    ('recv', 'set req.http.x = std.ip(req.http.y, client.ip);', True),
    ('recv', 'set req.http.x = std.ip(req.http.y, "1.2.3.4");', True),
    ('recv', 'set req.http.x = std.time(req.http.y, now);', True),
    ('recv', 'set req.http.x = std.duration("1s", 1);', False),
    ('recv', 'set req.http.x = std.integer(s="1", fallback=2);', True),
    ('recv', 'set req.http.x = std.integer(fallback=2, s="1");', True),
    ('recv', 'set req.http.x = std.integer(s="1", 2);', False),
    ('recv', 'set req.http.x = std.random(1, 2) + 1;', True),
    ('recv', 'set req.http.x = std.port(client.ip) + 1;', True),
    ('recv', 'set req.http.x = req.http.y.lower();', True),
    ('recv', 'set req.http.x = req.url.upper();', True),
    ('recv', 'set req.http.x = "abc".upper();', True),
    ('recv', 'set req.http.x = req.xid;', True),
    ('recv', 'set req.http.x = req.hash;', False),
    ('recv', 'set req.http.x = req;', False),
    ('recv', 'set req.http.x = bereq.url;', False),
    ('recv', 'set req.http.x = server.identity;', True),
    ('recv', 'set req.http.x = local.socket + local.endpoint;', True),
    ('recv', 'set req.http.x = req_top.url;', True),
    ('recv', 'set req.http.x = req_top.http.x;', True),
    ('recv', 'set req_top.http.x = "1";', False),
    ('recv', 'set req.http.x = sess.xid;', True),
    ('recv', 'set sess.timeout_idle = 1s;', True),
    ('recv', 'set req.http.x = storage.s0.free_space;', True),
    ('recv', 'set req.http.x = storage.nope.free_space;', False),
    ('recv', 'set req.storage = storage.s0;', True),
    ('recv', 'unset req.http.x;', True),
    ('recv', 'unset req.ttl;', False),
    ('recv', 'ban("req.url ~ x");', True),
    ('recv', 'hash_data(req.url);', False),
    ('hash', 'hash_data(req.url);', True),
    ('hash', 'hash_data(1);', True),
    ('recv', 'return (synth(1, 2));', True),
    ('recv', 'return (synth(200, "a", "b"));', False),
    ('recv', 'return (pass(1s));', True),
    ('backend_response', 'return (pass(1s));', True),
    ('backend_response', 'return (pass);', True),
    ('backend_response', 'return (error(503));', True),
    ('backend_response', 'return (error);', True),
    ('backend_response', 'return (retry);', True),
    ('backend_fetch', 'return (error(503, "x"));', True),
    ('backend_error', 'return (error(503));', False),
    ('backend_error', 'set beresp.body = "x";', True),
    ('backend_response', 'set beresp.body = "x";', False),
    ('synth', 'set resp.body = "x";', True),
    ('synth', 'set resp.body += "x";', True),
    ('deliver', 'set resp.body = "x";', False),
    ('deliver', 'set resp.do_esi = true;', True),
    ('deliver', 'set resp.http.x = obj.uncacheable;', True),
    ('hit', 'set req.http.x = obj.http.x + obj.status + obj.reason + obj.proto;', True),
    ('deliver', 'set resp.http.x = obj.status;', False),
    ('pipe', 'set bereq.http.x = "1";', True),
    ('pipe', 'set bereq.backend = default;', True),
    ('pipe', 'set bereq.first_byte_timeout = 1s;', False),
    ('backend_fetch', 'set bereq.first_byte_timeout = 1s;', True),
    ('backend_fetch', 'unset bereq.body;', True),
    ('backend_response', 'unset bereq.body;', False),
    ('backend_response', 'set beresp.filters = "gzip";', True),
    ('backend_error', 'set beresp.filters = "gzip";', False),
    ('init', 'set req.http.x = "1";', False),
    ('init', 'std.log(server.identity + now);', True),
    ('fini', 'return (fail);', False),
    ('init', 'return (fail);', True),
    ('recv', 'if (req.http.x) { } elsif (req.http.y) { } else { }', True),
    ('recv', 'if (req.http.x) { } else if (req.http.y) { } elif (1) { }', True),
    ('recv', '{ set req.http.x = "1"; }', True),
    ('recv', ';', False),
    ('recv', 'set req.http.x = 1KB;', False),
    ('recv', 'set req.http.x = 1 KB;', False),
    ('recv', 'set req.http.x = 1 s;', True),
    ('recv', 'set req.http.x = 1.5.5;', False),
    ('recv', 'set req.http.x = 08;', True),
    ('recv', 'set req.http.x = "a" "b";', False),
    ('recv', 'new x = std.foo();', False),
    ('recv', 'call vcl_deliver;', False),
    ('recv', 'call vcl_builtin_recv;', True),
    ('recv', 'call vcl_req_cookie;', True),
    ('recv', 'set req.http.x = - "a";', False),
    ('recv', 'set req.http.x = -req.restarts;', True),
    ('recv', 'set req.http.x = - -1;', True),
    ('recv', 'set req.http.x = req.http.x-y;', True),
    ('recv', 'set req.http.x = req.restarts-1;', False),
    ('recv', 'set req.http.x = req.restarts - 1;', True),
]


# Whole programs (declarations, cross references, regexes): (source, accepted by varnishd -C).
PROGRAM_VERDICTS = [
    ('vcl 4.1;\nbackend default { .host = "127.0.0.1"; .port = "8080"; }\n', True),
    ('vcl 4.1;\nbackend default { .host = "127.0.0.1"; .port = 8080; }\n', False),
    ('vcl 4.1;\nbackend default { .host = "127.0.0.1:8080"; }\n', True),
    ('vcl 4.1;\nbackend default { .host = "[::1]:8080"; }\n', True),
    ('vcl 4.1;\nbackend default { .host = "127.0.0.1 8080"; }\n', True),
    ('vcl 4.1;\nbackend default { .host = "nonexistent.invalid"; }\n', False),
    ('vcl 4.1;\nbackend default { .host = ""; }\n', False),
    ('vcl 4.1;\nbackend default { .host = "127.0.0.1:80"; .port = "81"; }\n', False),
    ('vcl 4.1;\nbackend default { .host = "127.0.0.1"; .port = "nonexistentport"; }\n', False),
    ('vcl 4.1;\nbackend default { .host = "[::1"; }\n', False),
    ('vcl 4.1;\nbackend default { .host = "[::1]x"; }\n', False),
    ('vcl 4.1;\nbackend default { .host = "localhost"; .host_header = "example.com"; }\n', True),
    ('vcl 4.1;\nbackend default { .path = "/tmp/x.sock"; }\n', True),
    ('vcl 4.1;\nbackend default { .host = "127.0.0.1"; .path = "/tmp/x.sock"; }\n', False),
    ('vcl 4.1;\nbackend default { .host = "127.0.0.1"; .connect_timeout = 1s; .first_byte_timeout = 2s; .between_bytes_timeout = 3s; .max_connections = 10; }\n', True),
    ('vcl 4.1;\nbackend default { .host = "127.0.0.1"; .connect_timeout = 1; }\n', False),
    ('vcl 4.1;\nbackend default { .host = "127.0.0.1"; .max_connections = 1s; }\n', False),
    ('vcl 4.1;\nbackend default { .host = "127.0.0.1"; .host = "127.0.0.2"; }\n', False),
    ('vcl 4.1;\nbackend default { .host = "127.0.0.1"; .probe = { .url = "/"; } }\n', True),
    ('vcl 4.1;\nbackend default { .host = "127.0.0.1"; .probe = { .url = "/"; }; }\n', False),
    ('vcl 4.1;\nbackend default { .host = "127.0.0.1"; .probe = p; }\nprobe p { .url = "/"; .timeout = 1s; .interval = 1s; .window = 8; .threshold = 3; .initial = 2; .expected_response = 200; }\n', False),
    ('vcl 4.1;\nprobe p { .url = "/"; }\nbackend default { .host = "127.0.0.1"; .probe = p; }\n', True),
    ('vcl 4.1;\nbackend default { .host = "127.0.0.1"; .probe = nope; }\n', False),
    ('vcl 4.1;\nbackend default { .host = "127.0.0.1"; .probe = { .request = "GET / HTTP/1.1" "Host: x"; } }\n', True),
    ('vcl 4.1;\nbackend default { .host = "127.0.0.1"; .probe = { .url = "/"; .request = "GET / HTTP/1.1"; } }\n', False),
    ('vcl 4.1;\nbackend default { .host = "127.0.0.1"; .probe = { .urll = "/"; } }\n', False),
    ('vcl 4.1;\nbackend default none;\nbackend b none;\nsub vcl_recv { set req.backend_hint = b; }\n', True),
    ('vcl 4.1;\nbackend default none;\nbackend default none;\n', False),
    ('vcl 4.1;\nbackend a { .host = "127.0.0.1"; }\nbackend b { .host = "127.0.0.2"; }\nsub vcl_recv { set req.backend_hint = b; }\n', True),
    ('vcl 4.1;\nbackend a { .host = "127.0.0.1"; }\nbackend b { .host = "127.0.0.2"; }\nsub vcl_recv { set req.backend_hint = a; }\n', False),
    ('vcl 4.1;\nbackend a { .host = "127.0.0.1"; }\nsub vcl_recv { set req.backend_hint = default; }\n', True),
    ('vcl 4.1;\nbackend default none;\nacl a { "1.2.3.4"; }\nsub vcl_recv { if (client.ip ~ a) {} }\n', True),
    ('vcl 4.1;\nbackend default none;\nacl a { "1.2.3.0"/24; !"1.2.3.4"; "::1"; "fe80::"/10; }\nsub vcl_recv { if (client.ip ~ a) {} }\n', True),
    ('vcl 4.1;\nbackend default none;\nacl a -pedantic { "1.2.3.4"/24; }\nsub vcl_recv { if (client.ip ~ a) {} }\n', True),
    ('vcl 4.1;\nbackend default none;\nacl a +log +table { "1.2.3.0"/24; }\nsub vcl_recv { if (client.ip ~ a) {} }\n', True),
    ('vcl 4.1;\nbackend default none;\nacl a { "1.2.3.4"/33; }\nsub vcl_recv { if (client.ip ~ a) {} }\n', False),
    ('vcl 4.1;\nbackend default none;\nacl a { "300.1.1.1"; }\nsub vcl_recv { if (client.ip ~ a) {} }\n', False),
    ('vcl 4.1;\nbackend default none;\nacl a { ("nonexistent.invalid"); }\nsub vcl_recv { if (client.ip ~ a) {} }\n', True),
    ('vcl 4.1;\nbackend default none;\nacl a { "1.2.3.4"; }\nacl a { "1.2.3.5"; }\nsub vcl_recv { if (client.ip ~ a) {} }\n', False),
    ('vcl 4.1;\nbackend default none;\nacl a { "1.2.3.4"; }\nsub vcl_recv { if (client.ip ~ a || server.ip ~ a) {} }\n', True),
    ('vcl 4.1;\nbackend default none;\nacl a { "1.2.3.4"; }\nsub vcl_recv { if (req.url ~ a) {} }\n', False),
    ('vcl 4.1;\nbackend default none;\nacl a { "1.2.3.4"; }\nsub vcl_recv { set req.http.x = a; }\n', True),
    ('vcl 4.0;\nbackend default none;\n', True),
    ('vcl 4.2;\nbackend default none;\n', False),
    ('vcl 4.1;\nvcl 4.1;\nbackend default none;\n', True),
    ('vcl 4.1;\nimport std;\nimport std;\nbackend default none;\n', True),
    ('vcl 4.1;\nimport std from "libvmod_std.so";\nbackend default none;\n', True),
    ('vcl 4.1;\nbackend default none;\nsub foo { }\nsub vcl_recv { call foo; }\nsub vcl_deliver { call foo; }\n', True),
    ('vcl 4.1;\nbackend default none;\nsub foo { return (pass); }\nsub vcl_recv { call foo; }\n', True),
    ('vcl 4.1;\nbackend default none;\nsub foo { return (pass); }\nsub vcl_recv { call foo; }\nsub vcl_deliver { call foo; }\n', False),
    ('vcl 4.1;\nbackend default none;\nsub foo { return; }\nsub vcl_recv { call foo; }\n', True),
    ('vcl 4.1;\nbackend default none;\nsub vcl_recv { }\nsub vcl_recv { }\n', True),
    ('vcl 4.1;\nbackend default none;\nsub vcl_builtin_recv { }\n', True),
    ('vcl 4.1;\nbackend default none;\nsub vcl_recv { call vcl_builtin_recv; }\n', True),
    ('vcl 4.1;\nbackend default none;\nsub vcl_recv { call vcl_recv; }\n', False),
    ('vcl 4.1;\nbackend default none;\nsub a { call b; }\nsub b { call c; }\nsub c { call a; }\nsub vcl_recv { call a; }\n', False),
    ('vcl 4.1;\nbackend default none;\nsub a { call b; }\nsub b { }\nsub vcl_recv { call a; call b; }\n', True),
    ('vcl 4.1;\nbackend default none;\nsub vcl_init { return (ok); }\nsub vcl_fini { return (ok); }\n', True),
    ('vcl 4.1;\nbackend default none;\nsub vcl_init { set req.http.x = "1"; }\n', False),
    ('vcl 4.1;\nbackend default none;\nsub vcl_recv { if (req.http.a) { return (pass); } else { return (pipe); } }\n', True),
    ('vcl 4.1;\nbackend default none;\nsub vcl_recv { return (lookup); }\n', False),
    ('vcl 4.1;\nbackend default none;\nsub vcl_hash { return (lookup); }\n', True),
    ('vcl 4.1;\nbackend default none;\nsub vcl_purge { return (synth(200)); }\n', True),
    ('vcl 4.1;\nbackend default none;\nsub vcl_miss { return (pass); }\n', True),
    ('vcl 4.1;\nbackend default none;\nsub vcl_pipe { return (pipe); }\n', True),
    ('vcl 4.1;\nbackend default none;\nsub vcl_backend_fetch { return (abandon); }\n', True),
    ('vcl 4.1;\nbackend default none;\nsub vcl_backend_error { return (retry); }\n', True),
    ('vcl 4.1;\nbackend default none;\nsub vcl_synth { return (restart); }\n', True),
    ('vcl 4.1;\nbackend default none;\n# comment\n// comment\n/* multi\nline */\n', True),
    ('vcl 4.1;\nbackend default none;\nsub vcl_recv { set req.http.x = {"a\nb"}; }\n', True),
    ('vcl 4.1;\nbackend default none;\nsub vcl_recv { set req.http.x = "a\nb"; }\n', False),
    ('vcl 4.1;\nbackend default none;\nsub vcl_recv { set req.http.x = """a"b"""; }\n', True),
    ('vcl 4.1;\nbackend default none;\nsub vcl_recv { set req.http.Ä = "x"; }\n', False),
    ('vcl 4.1;\nbackend default none;\nsub vcl_recv { set req.http.x-y_z = "x"; }\n', True),
    ('vcl 4.1;\nbackend default none;\nsub vcl_recv { set req.http.1x = "x"; }\n', False),
    ('vcl 4.1;\nbackend default none;\nsub vcl_recv { if (req.url) { } elseif (req.url) { } }\n', True),
    ('vcl 4.1;\nbackend default none;\nsub vcl_recv { if req.url { } }\n', False),
    ('vcl 4.1;\nbackend default none;\nsub vcl_recv { if (req.url) set req.url = "x"; }\n', False),
    ('vcl 4.1;\nbackend default none;\nsub vcl_recv { ban(req.url); }\n', True),
    ('vcl 4.1;\nbackend default none;\nsub vcl_deliver { ban(req.url); }\n', True),
    ('vcl 4.1;\nbackend default none;\nsub vcl_init { ban("obj.status == 200"); }\n', True),
    ('vcl 4.1;\nbackend default none;\nsub vcl_recv { synthetic("x"); }\n', False),
    ('vcl 4.1;\nbackend default none;\nsub vcl_backend_error { synthetic("x"); }\n', True),
    ('vcl 4.1;\nbackend default none;\nsub vcl_recv { set req.http.x = regsub(req.url, "(?<n>a)", "\\1"); }\n', True),
    ('vcl 4.1;\nbackend default none;\nsub vcl_recv { set req.http.x = regsub(req.url, "a{2,", "b"); }\n', True),
    ('vcl 4.1;\nbackend default none;\nsub vcl_recv { if (req.url ~ "\\d+\\w*\\s") {} }\n', True),
    ('vcl 4.1;\nbackend default none;\nsub vcl_recv { if (req.url ~ "[[:alpha:]]") {} }\n', True),
    ('vcl 4.1;\nbackend default none;\nsub vcl_recv { if (req.url ~ "(?i)a(?-i)b") {} }\n', True),
    ('vcl 4.1;\nbackend default none;\nsub vcl_recv { if (req.url ~ "a++b") {} }\n', True),
    ('vcl 4.1;\nbackend default none;\nsub vcl_recv { if (req.url ~ "(?>a)b") {} }\n', True),
    ('vcl 4.1;\nbackend default none;\nsub vcl_recv { if (req.url ~ "\\p{L}") {} }\n', True),
    ('vcl 4.1;\nbackend b { .host = "127.0.0.1"; }\nsub vcl_recv { if (std.port(client.ip) == 1) {} }\nimport std;\n', False),
    ('vcl 4.1;\nsub vcl_recv { set req.backend_hint = b; }\nbackend b { .host = "127.0.0.1"; }\n', True),
    ('vcl 4.1;\nbackend b { .host = "127.0.0.1"; }\nsub vcl_recv { if (client.ip ~ a) {} }\nacl a { "1.2.3.4"; }\n', True),
]


@pytest.mark.parametrize("src, vcc_ok", PROGRAM_VERDICTS, ids=[str(i) for i in range(len(PROGRAM_VERDICTS))])
def test_same_program_verdict_as_vcc(src, vcc_ok):
    assert accepted(src) is vcc_ok


# Case: VCC matches statement keywords and symbols (variables, subs, vmods, true/false/default)
# case-insensitively, but not top-level keywords, `else`, return actions or backend fields.
CASE_VERDICTS = [
    ('vcl 4.1;\nprobe HC { .url = "/"; }\nbackend Web { .host = "127.0.0.1"; .probe = hc; }\nbackend other { .host = "127.0.0.2"; }\nacl Local { "127.0.0.1"; }\nsub vcl_recv {\n\tif (client.ip ~ LOCAL) {\n\t\tset req.backend_hint = WEB;\n\t} else {\n\t\tset req.backend_hint = Other;\n\t}\n\tset req.http.b = req.backend_hint;\n}\n', True),
    ('vcl 4.1;\nbackend a { .host = "127.0.0.1"; }\nbackend A { .host = "127.0.0.2"; }\n', False),
    ('vcl 4.1;\nbackend default none;\nsub foo {}\nsub vcl_recv { call foo; SET req.url = "x"; }\n', True),
    ('vcl 4.1;\nbackend default none;\nsub foo {}\nsub vcl_recv { call foo; UNSET req.http.x; }\n', True),
    ('vcl 4.1;\nbackend default none;\nsub foo {}\nsub vcl_recv { call foo; CALL foo; }\n', True),
    ('vcl 4.1;\nbackend default none;\nsub foo {}\nsub vcl_recv { call foo; RETURN (hash); }\n', True),
    ('vcl 4.1;\nbackend default none;\nsub foo {}\nsub vcl_recv { call foo; return (HASH); }\n', False),
    ('vcl 4.1;\nbackend default none;\nsub foo {}\nsub vcl_recv { call foo; return (SYNTH(200)); }\n', False),
    ('vcl 4.1;\nbackend default none;\nsub foo {}\nsub vcl_recv { call foo; IF (req.url) {} }\n', True),
    ('vcl 4.1;\nbackend default none;\nsub foo {}\nsub vcl_recv { call foo; if (req.url) {} ELSE {} }\n', False),
    ('vcl 4.1;\nbackend default none;\nsub foo {}\nsub vcl_recv { call foo; if (req.url) {} ELSIF (req.url) {} }\n', False),
    ('vcl 4.1;\nbackend default none;\nsub foo {}\nsub vcl_recv { call foo; BAN("x"); }\n', True),
    ('vcl 4.1;\nbackend default none;\nsub foo {}\nsub vcl_recv { call foo; if (TRUE) {} }\n', True),
    ('vcl 4.1;\nbackend default none;\nsub foo {}\nsub vcl_recv { call foo; set req.backend_hint = DEFAULT; }\n', True),
    ('vcl 4.1;\nbackend default none;\nsub foo {}\nsub vcl_recv { call foo; CALL VCL_BUILTIN_RECV; }\n', True),
    ('vcl 4.1;\nbackend default none;\nsub foo {}\nsub vcl_recv { call foo; call FOO; }\n', True),
    ('vcl 4.1;\nbackend default none;\nsub foo {}\nsub vcl_recv { call foo; set req.http.x = REGSUB(req.url, "a", "b"); }\n', True),
    ('vcl 4.1;\nbackend default none;\nsub foo {}\nsub vcl_recv { call foo; set REQ.URL = "x"; }\n', True),
    ('vcl 4.1;\nbackend default none;\nsub foo {}\nsub vcl_recv { call foo; set req.HTTP.x = "1"; }\n', True),
    ('vcl 4.1;\nbackend default none;\nsub foo {}\nsub vcl_recv { call foo; set req.http.x = CLIENT.IP; }\n', True),
    ('VCL 4.1;\nbackend default none;\n', False),
    ('vcl 4.1;\nIMPORT std;\nbackend default none;\n', False),
    ('vcl 4.1;\nBACKEND default none;\n', False),
    ('vcl 4.1;\nbackend default NONE;\n', False),
    ('vcl 4.1;\nbackend default { .HOST = "127.0.0.1"; }\n', False),
    ('vcl 4.1;\nbackend default none;\nsub VCL_RECV { }\n', True),
    ('vcl 4.1;\nbackend default none;\nsub FOO {}\nsub vcl_deliver { call foo; }\n', True),
    ('vcl 4.1;\nimport std;\nbackend default none;\nsub vcl_recv { STD.LOG("x"); std.LOG("y"); }\n', True),
]


@pytest.mark.parametrize("src, vcc_ok", CASE_VERDICTS, ids=[str(i) for i in range(len(CASE_VERDICTS))])
def test_same_case_rules_as_vcc(src, vcc_ok):
    assert accepted(src) is vcc_ok


def source(sub: str, body: str) -> str:
    return HEAD + "sub vcl_%s {\n\t%s\n}\n" % (sub, body)


def accepted(src: str) -> bool:
    try:
        compile_vcl(src, "parity.vcl")
    except VCLError:
        return False
    return True


@pytest.mark.parametrize("sub, body, vcc_ok", VCC_VERDICTS, ids=[f"{s}:{b}" for s, b, _ in VCC_VERDICTS])
def test_same_verdict_as_vcc(sub, body, vcc_ok):
    assert accepted(source(sub, body)) is vcc_ok


VARNISHD = shutil.which("varnishd") or ("/usr/sbin/varnishd" if os.path.exists("/usr/sbin/varnishd") else None)


def _varnishd_id() -> str:
    st = os.stat(VARNISHD)
    return f"{os.path.realpath(VARNISHD)}:{st.st_size}:{st.st_mtime_ns}"


def vcc_verdicts(sources: list[str]) -> list[bool]:
    """`varnishd -C` accepts each source? Four at a time; answers are kept per (binary, source).

    One varnishd -C costs ~0.2 s of CPU, so the 270 sources would cost about a minute on every run;
    the answer for the same binary and the same text cannot change, so it is cached in a JSON file
    under the user's cache directory and only new or edited sources reach varnishd.
    """
    cache_dir = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "cacheserver-tests"
    cache_file = cache_dir / "vcc-verdicts.json"
    try:
        cache = json.loads(cache_file.read_text())
    except (OSError, ValueError):
        cache = {}
    binary = _varnishd_id()
    if cache.get("varnishd") != binary:
        cache = {"varnishd": binary, "verdicts": {}}
    known = cache["verdicts"]
    todo = sorted({src for src in sources if hashlib.sha256(src.encode()).hexdigest() not in known})
    # varnishd drops privileges before reading the file: a world-readable directory under /tmp.
    with tempfile.TemporaryDirectory(dir="/tmp") as tmp:
        os.chmod(tmp, 0o755)

        def live(item: tuple[int, str]) -> tuple[str, bool]:
            i, src = item
            path = Path(tmp) / f"p{i}.vcl"
            path.write_text(src)
            path.chmod(0o644)
            run = subprocess.run([VARNISHD, "-C", "-f", str(path)], capture_output=True, text=True, timeout=60)
            return src, run.returncode == 0 and "VCC-compiler failed" not in run.stderr

        with ThreadPoolExecutor(4) as pool:
            for src, ok in pool.map(live, enumerate(todo)):
                known[hashlib.sha256(src.encode()).hexdigest()] = ok
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
        tmp_file = cache_file.with_suffix(f".{os.getpid()}")
        tmp_file.write_text(json.dumps(cache))
        tmp_file.replace(cache_file)
    except OSError:
        pass
    return [known[hashlib.sha256(src.encode()).hexdigest()] for src in sources]


@pytest.mark.skipif(VARNISHD is None, reason="varnishd not installed")
def test_recorded_verdicts_still_match_varnishd():
    """Every recorded verdict (statements, case rules, whole programs) re-checked with varnishd -C."""
    sources = [source(sub, body) for sub, body, _ in VCC_VERDICTS] + [src for src, _ in CASE_VERDICTS]
    sources += [src for src, _ in PROGRAM_VERDICTS]
    verdicts = [ok for *_, ok in VCC_VERDICTS] + [ok for _, ok in CASE_VERDICTS]
    verdicts += [ok for _, ok in PROGRAM_VERDICTS]
    got = vcc_verdicts(sources)
    wrong = [src for src, want, ok in zip(sources, verdicts, got, strict=True) if ok is not want]
    assert wrong == []
