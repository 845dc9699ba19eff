"""Run-time parameters: varnishd's names, defaults, units and limits."""

import os
import re
import shutil
import subprocess

import pytest

from cacheserver.params import Params, parse_bytes, parse_duration


def test_defaults_match_varnishd():
    p = Params()
    assert p.default_ttl == 120.0 and p.default_grace == 10.0 and p.default_keep == 0.0
    assert p.http_req_hdr_len == 8192 and p.http_req_size == 32768 and p.http_max_hdr == 64
    assert p.max_restarts == 4 and p.timeout_idle == 5.0


# Every parameter of varnishd 7.1.1 with its default, as `varnishd -x parameter` prints them.
VARNISHD_DEFAULTS = {
    'accept_filter': 'on (if your platform supports accept filters)',
    'acceptor_sleep_decay': '0.9',
    'acceptor_sleep_incr': '0.000',
    'acceptor_sleep_max': '0.050',
    'auto_restart': 'on',
    'backend_idle_timeout': '60.000',
    'backend_local_error_holddown': '10.000',
    'backend_remote_error_holddown': '0.250',
    'ban_cutoff': '0',
    'ban_dups': 'on',
    'ban_lurker_age': '60.000',
    'ban_lurker_batch': '1000',
    'ban_lurker_holdoff': '0.010',
    'ban_lurker_sleep': '0.010',
    'between_bytes_timeout': '60.000',
    'cc_command': 'exec $CC $CFLAGS %w -shared -o %o %s',
    'cc_warnings': '-Wall -Werror',
    'cli_limit': '48k',
    'cli_timeout': '60.000',
    'clock_skew': '10',
    'clock_step': '1.000',
    'connect_timeout': '3.500',
    'critbit_cooloff': '180.000',
    'debug': 'none',
    'default_grace': '10.000',
    'default_keep': '0.000',
    'default_ttl': '120.000',
    'experimental': 'none',
    'feature': '+validate_headers',
    'fetch_chunksize': '16k',
    'fetch_maxchunksize': '0.25G',
    'first_byte_timeout': '60.000',
    'gzip_buffer': '32k',
    'gzip_level': '6',
    'gzip_memlevel': '8',
    'h2_header_table_size': '4k',
    'h2_initial_window_size': '65535b',
    'h2_max_concurrent_streams': '100',
    'h2_max_frame_size': '16k',
    'h2_max_header_list_size': '2147483647b',
    'h2_rx_window_increment': '1M',
    'h2_rx_window_low_water': '10M',
    'h2_rxbuf_storage': 'Transient',
    'http1_iovs': '64',
    'http_gzip_support': 'on',
    'http_max_hdr': '64',
    'http_range_support': 'on',
    'http_req_hdr_len': '8k',
    'http_req_size': '32k',
    'http_resp_hdr_len': '8k',
    'http_resp_size': '32k',
    'idle_send_timeout': '60.000',
    'listen_depth': '1024',
    'lru_interval': '2.000',
    'max_esi_depth': '5',
    'max_restarts': '4',
    'max_retries': '4',
    'max_vcl': '100',
    'max_vcl_handling': '1',
    'nuke_limit': '50',
    'pcre2_depth_limit': '20',
    'pcre2_jit_compilation': 'on',
    'pcre2_match_limit': '10000',
    'ping_interval': '3',
    'pipe_sess_max': '0',
    'pipe_timeout': '60.000',
    'pool_req': '10,100,10',
    'pool_sess': '10,100,10',
    'pool_vbo': '10,100,10',
    'prefer_ipv6': 'off',
    'rush_exponent': '3',
    'send_timeout': '600.000',
    'shortlived': '10.000',
    'sigsegv_handler': 'on',
    'syslog_cli_traffic': 'on',
    'tcp_fastopen': 'off',
    'tcp_keepalive_intvl': 'platform dependent',
    'tcp_keepalive_probes': 'platform dependent',
    'tcp_keepalive_time': 'platform dependent',
    'thread_pool_add_delay': '0.000',
    'thread_pool_destroy_delay': '1.000',
    'thread_pool_fail_delay': '0.200',
    'thread_pool_max': '5000',
    'thread_pool_min': '100',
    'thread_pool_reserve': '0 (auto-tune: 5% of thread_pool_min)',
    'thread_pool_stack': '80k',
    'thread_pool_timeout': '300.000',
    'thread_pool_watchdog': '60.000',
    'thread_pools': '2',
    'thread_queue_limit': '20',
    'thread_stats_rate': '10',
    'timeout_idle': '5.000',
    'timeout_linger': '0.050',
    'vary_notice': '10',
    'vcc_allow_inline_c': 'off',
    'vcc_err_unref': 'on',
    'vcc_unsafe_path': 'on',
    'vcl_cooldown': '600.000',
    'vcl_path': '${sysconfdir}/varnish:${datadir}/varnish/vcl',
    'vmod_path': '${libdir}/varnish/vmods',
    'vsl_buffer': '16k',
    'vsl_mask': '-Debug,-ObjProtocol,-ObjStatus,-ObjReason,-ObjHeader,-VCL_trace,-ExpKill,-WorkThread,-Hash,-VfpAcct,-H2RxHdr,-H2RxBody,-H2TxHdr,-H2TxBody,-VdpAcct',
    'vsl_reclen': '255b',
    'vsl_space': '80M',
    'vsm_free_cooldown': '60.000',
    'workspace_backend': '96k',
    'workspace_client': '96k',
    'workspace_session': '0.75k',
    'workspace_thread': '2k',
}
# Defaults we do not share, and why.
DIFFERENT = {
    # `varnishd -x parameter` prints the build's templates and "platform dependent"; param.show
    # (which ours follows) prints what they expand to on this machine
    "cc_command": "build template", "cc_warnings": "build template", "vcl_path": "build template",
    "vmod_path": "build template", "tcp_keepalive_intvl": "platform dependent",
    "tcp_keepalive_probes": "platform dependent", "tcp_keepalive_time": "platform dependent",
}
VARNISHD = shutil.which("varnishd") or ("/usr/sbin/varnishd" if os.path.exists("/usr/sbin/varnishd") else None)


def _number(text: str) -> float | None:
    m = re.fullmatch(r"(-?[0-9.]+)b?", text.strip())
    return float(m.group(1)) if m else None


def test_every_varnishd_parameter_is_known_with_varnishds_default():
    p = Params()
    wrong = {}
    for name, default in VARNISHD_DEFAULTS.items():
        d = p.definition(name)
        assert d is not None, name
        if name in DIFFERENT or d.kind == "na":  # na: not on this platform (accept_filter on Linux)
            continue
        ours = p.text(name)
        default = default.split(" (")[0]      # "on (if your platform supports accept filters)"
        a, b = _number(ours), _number(default)
        if (a, b) == (None, None) and ours != default or a != b:
            wrong[name] = (ours, default)
    assert wrong == {}
    with pytest.raises(ValueError, match="Unknown parameter"):
        p.set("no_such_param", "1")


@pytest.mark.skipif(VARNISHD is None, reason="varnishd not installed")
def test_recorded_defaults_are_varnishds():
    text = subprocess.run([VARNISHD, "-x", "parameter"], capture_output=True, text=True, timeout=60).stdout
    live = {}
    for name, body in re.findall(r"\.\. _ref_param_(\w+):\n\n\w+\n~+\n(.*?)(?=\n\.\. _ref_param_|\Z)", text, re.S):
        m = re.search(r"\* Default: (.*)", body)
        live[name] = m.group(1).strip() if m else None
    assert live == VARNISHD_DEFAULTS


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
