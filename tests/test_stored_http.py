"""A cached object's compact head (cacheserver/stored_http.py) reads back as the HttpMessage it was."""

from __future__ import annotations

from cacheserver.counters import Counters
from cacheserver.params import Params
from cacheserver.storage import ObjCore, Storage
from cacheserver.stored_http import StoredHttp, fields_size
from vcl.runtime import Headers, HttpMessage

FIELDS = [["Content-Type", "text/plain"], ["X-Odd", "a: b: c"], ["Set-Cookie", "a=1"], ["set-cookie", "b=2"],
          ["X-Empty", ""], ["X-Sp", " lead"], ["X-Utf", "caf\u00e9 \udcff"]]


def _message() -> HttpMessage:
    return HttpMessage(proto="HTTP/1.0", status=203, reason="Non-Authoritative", headers=Headers(FIELDS))


def test_it_reads_back_the_same_fields_status_line_and_size():
    http = _message()
    stored = StoredHttp.of(http)
    assert isinstance(stored, StoredHttp)
    assert (stored.proto, stored.status, stored.reason) == ("HTTP/1.0", 203, "Non-Authoritative")
    assert stored.headers.items() == http.headers.items()
    assert stored.headers.get("set-cookie") == "a=1" and stored.headers.get_all("Set-Cookie") == ["a=1", "b=2"]
    assert fields_size(stored) == fields_size(http) == sum(len(n) + len(v) + 3 for n, v in FIELDS)
    copy = stored.copy()
    assert type(copy) is HttpMessage and copy.headers.items() == http.headers.items()
    copy.headers.set("X-New", "1")                 # a copy is the reader's own
    assert stored.headers.get("X-New") is None and StoredHttp.of(stored) is stored


def test_fields_it_could_not_tell_apart_keep_the_message_as_it_is():
    for fields in ([["X-Nul", "a\0b"]], [["X: y", "v"]]):
        http = HttpMessage(status=200, headers=Headers(fields))
        assert StoredHttp.of(http) is http


def test_an_object_is_stored_compact_and_charged_as_before():
    store = Storage(1 << 20, Counters(), Params())
    req = HttpMessage("GET", "/")
    oc: ObjCore = store.lookup(b"k", req, 0.0, always_miss=True).busy
    oc.http = _message()
    expected = ObjCore()
    expected.http = _message()
    oc.t_origin, oc.ttl = 0.0, 1e12
    assert store.unbusy(oc, req, None)
    assert isinstance(oc.http, StoredHttp) and oc.http.headers.items() == _message().headers.items()
    assert oc.size == expected.compute_size()
