"""Plain hits reuse a response-head template: the bytes must be those the full path would send."""

from __future__ import annotations

import re

import pytest
from inproc import inproc_cache_factory
from test_cache_support import Resp, read_message

make = pytest.fixture(inproc_cache_factory)    # in-process (tests/inproc.py)

PLAIN = "vcl 4.1;\nBACKEND\n"
WITH_DELIVER = "vcl 4.1;\nBACKEND\nsub vcl_deliver { }\n"   # user code: never the template


def origin(req):
    return Resp(body=b"x" * 100, headers=[("Cache-Control", "max-age=60"), ("ETag", '"e1"')])


def fetch_heads(cache, n: int, extra: bytes = b"") -> list[bytes]:
    heads = []
    with cache.proc.connect() as sock:
        for _ in range(n):
            sock.sendall(b"GET /obj HTTP/1.1\r\nHost: test\r\n" + extra + b"\r\n")
            head, body = read_message(sock)
            assert body == b"x" * 100 or head.startswith(b"HTTP/1.1 206")
            heads.append(head)
    return heads


def normalised(head: bytes) -> bytes:
    """The head with the per-response values (transaction ids, age, dates) blanked."""
    head = re.sub(rb"X-Varnish: [\d ]+", b"X-Varnish: N", head)
    head = re.sub(rb"Age: \d+", b"Age: N", head)
    return re.sub(rb"Date: [^\r]+", b"Date: D", head)


def test_template_hits_send_the_same_head_as_the_full_path(make):
    plain, _ = make(PLAIN, origin)
    full, _ = make(WITH_DELIVER, origin)
    plain_heads = fetch_heads(plain, 4)
    full_heads = fetch_heads(full, 4)
    # miss (it makes the template), then template hits; WITH_DELIVER: the full path throughout
    for a, b in zip(plain_heads, full_heads, strict=True):
        assert normalised(a) == normalised(b)
    assert normalised(plain_heads[3]) == normalised(plain_heads[1])


# varnishd 7.1.1's heads for the same origin response and the same four requests on one connection
# (miss, then three hits), recorded with `varnishd -F -b` in front of test_cache_support.Backend.
VARNISHD_HEADS = [
    b'HTTP/1.1 200 X\r\nCache-Control: max-age=60\r\nETag: "e1"\r\nContent-Length: 100\r\n'
    b"Date: Mon, 30 Nov 2026 04:51:47 GMT\r\nX-Varnish: 2\r\nAge: 0\r\nVia: 1.1 varnish (Varnish/7.1)\r\n"
    b"Accept-Ranges: bytes\r\nConnection: keep-alive\r\n\r\n",
] + [
    b'HTTP/1.1 200 X\r\nCache-Control: max-age=60\r\nETag: "e1"\r\nContent-Length: 100\r\n'
    b"Date: Mon, 30 Nov 2026 04:51:47 GMT\r\nX-Varnish: %d 3\r\nAge: 0\r\nVia: 1.1 varnish (Varnish/7.1)\r\n"
    b"Accept-Ranges: bytes\r\nConnection: keep-alive\r\n\r\n" % xid for xid in (4, 5, 6)
]


def test_template_and_full_path_send_varnishds_bytes(make):
    """Both paths against varnishd's recorded bytes, so a mistake they share fails too."""
    for vcl in (PLAIN, WITH_DELIVER):
        cache, _ = make(vcl, origin)
        heads = fetch_heads(cache, 4)
        assert [normalised(h) for h in heads] == [normalised(h) for h in VARNISHD_HEADS]


def test_template_hits_number_transactions_and_count_bytes(make):
    cache, _ = make(PLAIN, origin)
    heads = fetch_heads(cache, 4)
    xids = [re.search(rb"X-Varnish: ([\d ]+)\r\n", h).group(1).split() for h in heads]
    assert len(xids[0]) == 1 and all(len(x) == 2 for x in xids[1:])
    assert len({x[1] for x in xids[1:]}) == 1                 # every hit names the one fetch
    assert len({x[0] for x in xids}) == 4                     # each request its own xid
    counters = cache.cli.counters()
    assert counters["cache_hit"] == 3
    assert counters["s_resp_hdrbytes"] == sum(len(h) for h in heads)
    assert counters["s_resp_bodybytes"] == 400


def test_ranges_and_conditionals_skip_the_template(make):
    cache, _ = make(PLAIN, origin)
    fetch_heads(cache, 3)
    head = fetch_heads(cache, 1, b"Range: bytes=0-9\r\n")[0]
    assert head.startswith(b"HTTP/1.1 206") and b"Content-Range: bytes 0-9/100" in head
    with cache.proc.connect() as sock:
        sock.sendall(b'GET /obj HTTP/1.1\r\nHost: test\r\nIf-None-Match: "e1"\r\n\r\n')
        assert read_message(sock)[0].startswith(b"HTTP/1.1 304")


def test_a_new_vcl_does_not_reuse_the_old_template(make, tmp_path):
    cache, backend = make(PLAIN, origin)
    fetch_heads(cache, 3)
    newer = tmp_path / "newer.vcl"
    newer.write_text(f'vcl 4.1;\nbackend default {{ .host = "127.0.0.1"; .port = "{backend.port}"; }}\n'
                     'sub vcl_deliver { set resp.http.X-New = "yes"; }\n')
    assert cache.cli.cmd(f"vcl.load newer {newer}")[0] == 200
    assert cache.cli.cmd("vcl.use newer")[0] == 200
    assert b"X-New: yes\r\n" in fetch_heads(cache, 1)[0]


def test_user_code_in_a_vcl_builtin_sub_is_never_skipped(make):
    """vcl_builtin_deliver / vcl_builtin_hit / vcl_builtin_hash written by the user join the built-in
    code: neither the head template nor the server's own run of the built-in subs may skip them."""
    cache, _ = make(PLAIN.replace("BACKEND\n", "BACKEND\nsub vcl_builtin_deliver { set resp.http.X-B = "
                                  "req.xid; }\n"), origin)
    for head in fetch_heads(cache, 5):
        assert re.search(rb"X-B: (\d+)\r\n", head).group(1) == re.search(rb"X-Varnish: (\d+)", head).group(1)
    cache, _ = make(PLAIN.replace("BACKEND\n", "BACKEND\nsub vcl_builtin_hit { return (pass); }\n"
                                  'sub vcl_builtin_hash { hash_data("same"); return (lookup); }\n'), origin)
    heads = fetch_heads(cache, 3)
    assert cache.cli.counters()["s_pass"] == 2       # hits passed: vcl_builtin_hit ran
    with cache.proc.connect() as sock:               # another URL, the same hash: vcl_builtin_hash ran
        sock.sendall(b"GET /other HTTP/1.1\r\nHost: test\r\n\r\n")
        read_message(sock)
    assert cache.cli.counters()["cache_hit"] == 3
    assert len(heads) == 3


def _get(cache, *urls: bytes) -> list[bytes]:
    heads = []
    with cache.proc.connect() as sock:
        for url in urls:
            sock.sendall(b"GET %s HTTP/1.1\r\nHost: test\r\n\r\n" % url)
            heads.append(read_message(sock)[0])
    return heads


def test_a_miss_makes_the_template_that_objects_of_one_shape_share(make):
    """The miss that fetched an object leaves its template, so even its first hit is a template hit;
    the template (all but the object's own fields) is one for all objects alike, so it costs each a
    reference only."""
    cache, _ = make(PLAIN, origin)
    _get(cache, b"/a", b"/b")
    objects = {oc.xid: oc for oc in cache.proc.server.storage.objects()}
    a, b = objects.values()
    assert a.hits == b.hits == 0 and a.fast_head is not None and a.fast_head is b.fast_head
    full, _ = make(WITH_DELIVER, origin)
    heads = _get(cache, b"/a", b"/b", b"/a")
    assert [normalised(h) for h in heads] == [normalised(h) for h in _get(full, b"/a", b"/b", b"/a", b"/b")[1:]]


def test_an_object_whose_head_delivery_rewrites_gets_no_template(make):
    """Its own Accept-Ranges is moved to the end on delivery: the head is not its fields in order,
    so no template is made and every hit takes the full path (same bytes as with user code)."""
    def ranges(req):
        return Resp(body=b"x" * 100, headers=[("Accept-Ranges", "none"), ("Cache-Control", "max-age=60")])

    plain, _ = make(PLAIN, ranges)
    full, _ = make(WITH_DELIVER, ranges)
    heads = _get(plain, b"/r", b"/r", b"/r")
    assert [oc.fast_head for oc in plain.proc.server.storage.objects()] == [None]
    assert [normalised(h) for h in heads] == [normalised(h) for h in _get(full, b"/r", b"/r", b"/r")]
    assert heads[2].endswith(b"Accept-Ranges: bytes\r\nConnection: keep-alive\r\n\r\n")


def test_a_chunked_miss_leaves_no_template_and_the_first_hit_makes_it(make):
    """A body of unknown length reaches the miss's client chunked, its hits with a Content-Length:
    the miss's head is not a hit's, so the first hit (the full path) makes the template."""
    def chunked(req):
        return Resp(chunks=[(0.0, b"x" * 60), (0.05, b"y" * 40)], headers=[("Cache-Control", "max-age=60")])

    plain, _ = make(PLAIN, chunked)
    full, _ = make(WITH_DELIVER, chunked)
    miss = _get(plain, b"/c")[0]
    assert b"Transfer-Encoding: chunked" in miss
    (oc,) = plain.proc.server.storage.objects()
    assert oc.fast_head is None
    heads = _get(plain, b"/c", b"/c")
    assert oc.fast_head is not None
    assert [normalised(h) for h in heads] == [normalised(h) for h in _get(full, b"/c", b"/c", b"/c")[1:]]
    assert b"Content-Length: 100\r\n" in heads[1]
