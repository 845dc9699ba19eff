"""A backend's probe sets its health from .initial before vcl_init runs, as in varnishd."""

import pytest

from cacheserver.server import Server, VCLLoadError

VCL = """vcl 4.1;
import std;
probe p {{ .initial = {initial}; .threshold = 2; .window = 4; .interval = 1s; }}
backend b {{ .host = "127.0.0.1"; .port = "9"; .probe = p; }}
sub vcl_init {{
    if (!std.healthy(b)) {{
        return (fail);
    }}
}}
"""


def test_a_backend_below_its_threshold_is_sick_in_vcl_init():
    server = Server()
    with pytest.raises(VCLLoadError, match="Failed initialization"):
        server.vcl_load("sick", VCL.format(initial=1), "sick.vcl")
    assert "sick" not in server.probes.by_vcl


def test_a_backend_at_its_threshold_is_healthy_in_vcl_init():
    server = Server()
    server.vcl_load("fine", VCL.format(initial=2), "fine.vcl")
    assert "fine" in server.vcls
