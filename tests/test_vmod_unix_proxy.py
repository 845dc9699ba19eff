"""vmods unix and proxy: on a TCP connection without PROXY TLVs they answer as varnishd 7.1 does
(recorded: alpn/ver unset, ssl/cs false, v 0; uid/gid -1 and user/group unset, each with the VCL_Error
"vmod unix error: not listening on a Unix domain socket"); on a Unix socket unix.* reads SO_PEERCRED."""

from __future__ import annotations

import grp
import os
import pwd
import socket

import pytest

from vcl.compiler import compile_vcl
from vcl.runtime import Context, HttpMessage, VCLFailure

BODY = """
	set resp.http.alpn = proxy.alpn();
	set resp.http.ssl = proxy.is_ssl();
	set resp.http.v = proxy.ssl_verify_result();
	set resp.http.ver = proxy.ssl_version();
	set resp.http.cs = proxy.client_has_cert_sess();
	set resp.http.uid = unix.uid();
	set resp.http.user = unix.user();
	set resp.http.gid = unix.gid();
	set resp.http.group = unix.group();
"""


class _Transport:
    def __init__(self, sock: socket.socket | None) -> None:
        self.sock = sock

    def get_extra_info(self, name: str):
        return self.sock if name == "socket" else None


class _Session:
    def __init__(self, sock: socket.socket | None, tlvs: dict | None = None) -> None:
        self.transport = _Transport(sock)
        self.proxy_tlvs = tlvs


def _run(session) -> Context:
    vcl = compile_vcl("vcl 4.1;\nimport proxy;\nimport unix;\nbackend b none;\nsub vcl_synth {%s}\n" % BODY, "t.vcl")
    req = HttpMessage("GET", "/")
    ctx = Context(method="vcl_synth", req=req, req_top=req, resp=HttpMessage(status=200), vcl=vcl, session=session)
    vcl.subs["vcl_synth"](ctx)
    return ctx


def test_tcp_connection_answers_as_varnishd():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp:
        ctx = _run(_Session(tcp))
    h = ctx.resp.headers
    assert [h.get(k) for k in ("alpn", "ssl", "v", "ver", "cs", "uid", "user", "gid", "group")] == \
        ["", "false", "0", "", "false", "-1", "", "-1", ""]
    errors = [text for tag, text in ctx.log if tag == "VCL_Error"]
    assert errors == ["vmod unix error: not listening on a Unix domain socket"] * 4


def test_unix_socket_peer_credentials():
    a, b = socket.socketpair(socket.AF_UNIX)
    with a, b:
        h = _run(_Session(a)).resp.headers
    assert h.get("uid") == str(os.getuid()) and h.get("gid") == str(os.getgid())
    assert h.get("user") == pwd.getpwuid(os.getuid()).pw_name
    assert h.get("group") == grp.getgrgid(os.getgid()).gr_name


def test_proxy_tlvs_when_the_session_has_them():
    ssl = bytes([0x05]) + (20).to_bytes(4, "big")
    h = _run(_Session(None, {0x01: b"h2", 0x20: ssl, 0x21: b"TLSv1.3"})).resp.headers
    assert (h.get("alpn"), h.get("ssl"), h.get("cs"), h.get("v"), h.get("ver")) == ("h2", "true", "true", "20", "TLSv1.3")


def test_unix_fails_in_vcl_init():
    vcl = compile_vcl("vcl 4.1;\nimport unix;\nbackend b none;\nsub vcl_init { if (unix.uid() == 0) {} }\n", "t.vcl")
    ctx = Context(method="vcl_init", vcl=vcl)
    assert vcl.init(ctx).name == "fail"
    assert ctx.log[-1] == ("VCL_Error", "vmod unix failure: may not be called in vcl_init or vcl_fini")
    with pytest.raises(VCLFailure):
        vcl.subs["vcl_init"](Context(method="vcl_init", vcl=vcl))
