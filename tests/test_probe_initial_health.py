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


def test_backend_health_record_as_varnishd():
    """Backend_health records, against lines varnishd 7.1.1 wrote for a probe (.window 8, .threshold 3,
    .initial 1) of a backend that refuses connections: the record at load, then a failed poll."""
    from types import SimpleNamespace

    from cacheserver.probes import health_record

    probe = SimpleNamespace(threshold=3, window=8)
    assert health_record("s2", False, False, "H", 1, probe, 0.0, 0.0, "") == (
        "Backend_health", 's2 Went sick -------H 1 3 8 0.000000 0.000000 ""')
    assert health_record("s2", True, False, "", 1, probe, 0.0, 0.0, "Open error 111 (Connection refused)") == (
        "Backend_health", 's2 Still sick -------- 1 3 8 0.000000 0.000000 "Open error 111 (Connection refused)"')
    assert health_record("s1", True, True, "4XRH", 3, probe, 0.5, 0.25, "HTTP/1.1 200 OK")[1] == \
        's1 Back healthy 4---X-RH 3 3 8 0.500000 0.250000 "HTTP/1.1 200 OK"'


def test_probes_log_backend_health(tmp_path):
    """A loaded VCL's probers log their state at load, and each poll once polling starts (vxid 0)."""
    import asyncio

    from cacheserver.vsl import Record, VslReader

    async def run() -> list:
        server = Server()
        server.open_log(tmp_path)
        server.vcl_load("v", VCL.format(initial=2).replace("interval = 1s", "interval = 0.05s"), "v.vcl")
        server.probes.start("v", server.vcls["v"])
        reader = VslReader(tmp_path)
        seen: list = []
        for _ in range(100):
            seen += [r for r in reader.read() if isinstance(r, Record) and r.tag == "Backend_health"]
            if len(seen) >= 2:
                break
            await asyncio.sleep(0.05)
        server.probes.stop_all()
        return seen

    seen = asyncio.run(run())
    assert seen[0].vxid == 0 and seen[0].text == 'b Still healthy -------H 2 2 4 0.000000 0.000000 ""'
    assert seen[1].text.startswith("b ") and '"Open error' in seen[1].text
