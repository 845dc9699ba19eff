"""Delivery from cache: conditional requests (304), Range (206/416), HEAD, Age."""

from __future__ import annotations

import time

import pytest
from inproc import inproc_cache_factory, wait_for
from test_cache_support import Resp

make = pytest.fixture(inproc_cache_factory)    # in-process, so that mutmut sees fsm.py run

LM = "Wed, 21 Oct 2015 07:28:00 GMT"


def _respond(req):
    return Resp(headers=[("ETag", '"v1"'), ("Last-Modified", LM)], body=b"0123456789")


def test_if_none_match_is_answered_304_from_cache(make):
    cache, backend = make("vcl 4.1;\nBACKEND\n", _respond)
    cache.get("/")
    status, h, body = cache.get("/", headers={"If-None-Match": '"v1"'})
    assert status == 304 and body == b"" and "content-length" not in h
    assert h["etag"] == '"v1"'
    status, _, body = cache.get("/", headers={"If-None-Match": 'W/"v1"'})
    assert status == 304                                  # weak comparison
    # varnishd 7.1.1 compares the whole value, not a list (tests/vtc/r00004.vtc)
    status, _, body = cache.get("/", headers={"If-None-Match": 'W/"v1", "other"'})
    assert status == 200
    status, _, body = cache.get("/", headers={"If-None-Match": '"v2"'})
    assert status == 200 and body == b"0123456789"
    assert len(backend.requests) == 1                     # the client's condition never reached it


def test_if_modified_since(make):
    cache, _ = make("vcl 4.1;\nBACKEND\n", _respond)
    cache.get("/")
    assert cache.get("/", headers={"If-Modified-Since": LM})[0] == 304
    assert cache.get("/", headers={"If-Modified-Since": "Wed, 21 Oct 2015 07:00:00 GMT"})[0] == 200
    # a date in the future is ignored
    assert cache.get("/", headers={"If-Modified-Since": "Wed, 21 Oct 2037 07:00:00 GMT"})[0] == 200


def test_pass_responses_are_not_turned_into_304(make):
    cache, _ = make("vcl 4.1;\nBACKEND\nsub vcl_recv { return (pass); }\n", _respond)
    assert cache.get("/", headers={"If-None-Match": '"v1"'})[0] == 200


@pytest.mark.parametrize("rng, status, body, content_range", [
    ("bytes=2-4", 206, b"234", "bytes 2-4/10"),
    ("bytes=7-", 206, b"789", "bytes 7-9/10"),
    ("bytes=-3", 206, b"789", "bytes 7-9/10"),
    ("bytes=5-100", 206, b"56789", "bytes 5-9/10"),
    ("bytes=10-", 416, b"", "bytes */10"),
    ("bytes=4-2", 416, b"", "bytes */10"),
    ("items=1-2", 416, b"", "bytes */10"),
])
def test_ranges_from_cache(make, rng, status, body, content_range):
    cache, _ = make("vcl 4.1;\nBACKEND\n", _respond)
    cache.get("/")
    got, h, payload = cache.get("/", headers={"Range": rng})
    assert (got, payload, h["content-range"]) == (status, body, content_range)
    assert h["content-length"] == str(len(body))


def test_if_range(make):
    cache, _ = make("vcl 4.1;\nBACKEND\n", _respond)
    cache.get("/")
    assert cache.get("/", headers={"Range": "bytes=0-1", "If-Range": '"v1"'})[0] == 206
    assert cache.get("/", headers={"Range": "bytes=0-1", "If-Range": '"v0"'})[0] == 200
    assert cache.get("/", headers={"Range": "bytes=0-1", "If-Range": LM})[0] == 206


def test_range_on_a_miss_is_served_from_the_fetched_object(make):
    cache, backend = make("vcl 4.1;\nBACKEND\n", _respond)
    status, _, body = cache.get("/", headers={"Range": "bytes=0-3"})
    assert (status, body) == (206, b"0123")
    assert backend.requests[0].header("Range") is None      # the cache fetches the whole object


def test_range_support_can_be_turned_off(make):
    cache, _ = make("vcl 4.1;\nBACKEND\n", _respond, "-p", "http_range_support=off")
    cache.get("/")
    status, h, body = cache.get("/", headers={"Range": "bytes=0-1"})
    assert status == 200 and body == b"0123456789" and "accept-ranges" not in h


def test_head_from_cache_keeps_content_length(make):
    cache, _ = make("vcl 4.1;\nBACKEND\n", _respond)
    cache.get("/")
    status, h, body = cache.get("/", method="HEAD")
    assert status == 200 and h["content-length"] == "10" and body == b""


def test_age_grows_with_time_in_cache(make):
    cache, _ = make("vcl 4.1;\nBACKEND\n", lambda req: Resp(headers=[("Age", "30")], body=b"a"))
    t0 = time.monotonic()
    _, h, _ = cache.get("/")
    t1 = time.monotonic()
    assert h["age"] == "30"
    ages = []

    def grown() -> bool:
        start = time.monotonic()
        ages.append((start, int(cache.get("/")[1]["age"]), time.monotonic()))
        return ages[-1][1] != 30

    wait_for(grown, interval=0.05, what="Age to grow")
    start, age, end = ages[-1]
    # the whole seconds the object spent in the cache between the two answers, however slow the
    # machine: exactly 31 when the poll sees the first change at once
    assert 30 + int(start - t1) <= age <= 30 + int(end - t0), ages
