"""The headers of an ESI page as varnishd 7.1 writes them (checked against varnishd with the same
exchange: its weak ETag comes after Accept-Ranges, before Connection)."""

from __future__ import annotations

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
