"""Run-time parameters: varnishd's names, defaults, units and limits."""

import pytest

from cacheserver.params import Params, parse_bytes, parse_duration


def test_defaults_match_varnishd():
    p = Params()
    assert p.default_ttl == 120.0 and p.default_grace == 10.0 and p.default_keep == 0.0
    assert p.http_req_hdr_len == 8192 and p.http_req_size == 32768 and p.http_max_hdr == 64
    assert p.max_restarts == 4 and p.timeout_idle == 5.0


def test_every_varnishd_parameter_is_known():
    p = Params()
    for name in ("thread_pool_timeout", "rush_exponent", "workspace_client", "pool_req", "vsl_mask"):
        p.get(name)
    with pytest.raises(ValueError, match="Unknown parameter"):
        p.set("no_such_param", "1")


@pytest.mark.parametrize("text,value", [("1k", 1024), ("2m", 2 << 20), ("512", 512), ("1.5k", 1536)])
def test_bytes(text, value):
    assert parse_bytes(text) == value


@pytest.mark.parametrize("text,value", [(".1", 0.1), ("2m", 120.0), ("1.5", 1.5), ("100ms", 0.1)])
def test_durations(text, value):
    assert parse_duration(text) == pytest.approx(value)


@pytest.mark.parametrize("name,text", [
    ("default_ttl", "-1"), ("http_max_hdr", "0"), ("http_max_hdr", "1000000"), ("pool_req", "10"),
    ("pool_req", "10,1,1"), ("pool_req", "a,10,10"), ("prefer_ipv6", "foobar"),
    ("thread_pool_reserve", "96"),
])
def test_bad_values_are_refused_and_change_nothing(name, text):
    p = Params()
    before = p.text(name)
    with pytest.raises(ValueError):
        p.set(name, text)
    assert p.text(name) == before


def test_thread_pool_limits_bound_each_other():
    p = Params()
    p.set("thread_pool_max", "110")
    with pytest.raises(ValueError):
        p.set("thread_pool_min", "111")
    p.set("thread_pool_min", "51")
    with pytest.raises(ValueError):
        p.set("thread_pool_max", "50")
    p.set("thread_pool_max", "unlimited")
