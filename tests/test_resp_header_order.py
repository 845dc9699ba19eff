"""Where varnishd 7.1 puts the weak ETag of a changed representation (checked against varnishd
with the same exchanges): a gunzipped delivery's is made in cnt_deliver, before Accept-Ranges; an ESI
page's when the esi VDP starts, after it."""

from __future__ import annotations

import gzip

import pytest
from inproc import inproc_cache_factory
from test_cache_support import Resp, read_message

make = pytest.fixture(inproc_cache_factory)


def test_an_esi_pages_etag_is_made_weak_when_the_esi_vdp_starts(make):
    """RFC2616_Weaken_Etag at the esi VDP's init: after vcl_deliver, the ETag unset and added last."""
    def respond(req):
        if req.url == "/inc":
            return Resp(body=b"inc")
        return Resp(headers=[("ETag", '"abc"')], body=b'<a><esi:include src="/inc"/></a>')

    vcl = ('vcl 4.1;\nBACKEND\nsub vcl_backend_response { set beresp.do_esi = bereq.url == "/"; }\n'
           'sub vcl_deliver { set resp.http.seen = resp.http.ETag; }\n')
    cache, _ = make(vcl, respond)
    with cache.proc.connect() as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        head, body = read_message(sock)
    assert body == b"<a>inc</a>"
    fields = [line.partition(b": ") for line in head.split(b"\r\n")[1:]]
    names = [name for name, _, _ in fields]
    assert (b"ETag", b": ", b'W/"abc"') in fields and (b"seen", b": ", b'"abc"') in fields
    assert names.index(b"Accept-Ranges") < names.index(b"ETag") < names.index(b"Connection")


def _names(head: bytes) -> list[bytes]:
    return [line.partition(b": ")[0] for line in head.split(b"\r\n")[1:]]


def test_a_gunzipped_delivery_weakens_the_etag_before_accept_ranges(make):
    def respond(req):
        return Resp(headers=[("Content-Encoding", "gzip"), ("ETag", '"z"')], body=gzip.compress(b"hello"))

    cache, _ = make("vcl 4.1;\nBACKEND\n", respond)
    with cache.proc.connect() as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        head, body = read_message(sock)
    assert body == b"hello" and b'\r\nETag: W/"z"\r\n' in head
    names = _names(head)
    assert names.index(b"Via") < names.index(b"ETag") < names.index(b"Accept-Ranges")
