"""Counters as varnishstat names them ("MAIN.cache_hit"), kept as plain int attributes.

Incrementing an attribute is the cheapest thing Python can do on the hot path.
"""

from __future__ import annotations

MAIN_COUNTERS = (
    "uptime", "sess_conn", "sess_drop", "sess_readahead", "sess_fail", "sess_closed", "sess_closed_err", "sess_herd",
    "sess_fail_econnaborted", "sess_fail_eintr", "sess_fail_emfile", "sess_fail_ebadf", "sess_fail_enomem",
    "sess_fail_other",
    "client_req", "client_req_400", "client_req_417", "client_resp_500",
    "cache_hit", "cache_hit_grace", "cache_hitpass", "cache_hitmiss", "cache_miss",
    "backend_conn", "backend_unhealthy", "backend_busy", "backend_fail", "backend_reuse", "backend_recycle",
    "backend_retry", "backend_req",
    "fetch_head", "fetch_length", "fetch_chunked", "fetch_eof", "fetch_bad", "fetch_none", "fetch_1xx",
    "fetch_204", "fetch_304", "fetch_failed", "fetch_no_thread",
    "n_object", "n_objectcore", "n_objecthead", "n_backend", "n_expired", "n_lru_nuked", "n_lru_moved",
    "n_purges", "n_obj_purged", "n_vcl", "n_vcl_avail", "n_vcl_discard",
    "bans", "bans_completed", "bans_obj", "bans_req", "bans_added", "bans_deleted", "bans_tested",
    "bans_obj_killed", "bans_lurker_tested", "bans_tests_tested", "bans_lurker_tests_tested",
    "bans_lurker_obj_killed", "bans_dups",
    "s_sess", "s_pipe", "s_pass", "s_fetch", "s_synth", "s_req_hdrbytes", "s_req_bodybytes",
    "s_resp_hdrbytes", "s_resp_bodybytes", "s_pipe_hdrbytes", "s_pipe_in", "s_pipe_out",
    "sc_rem_close", "sc_req_close", "sc_req_http10", "sc_rx_bad", "sc_rx_body", "sc_rx_junk",
    "sc_rx_overflow", "sc_rx_timeout", "sc_tx_pipe", "sc_tx_error", "sc_tx_eof", "sc_resp_close",
    "sc_overload", "sc_pipe_overflow", "sc_range_short", "sc_req_http20", "sc_vcl_failure",
    "busy_sleep", "busy_wakeup", "busy_killed", "threads", "threads_created", "losthdr",
    "vcl_fail", "esi_errors", "esi_warnings", "exp_mailed", "exp_received",
    "hcb_nolock", "hcb_lock", "hcb_insert",
    "steal_ok", "steal_refused", "steal_failed", "n_pipe", "pipe_limited",
    "n_lru_limited", "s_bgfetch",
    "summs", "beresp_uncacheable", "beresp_shortlived", "n_vampireobject", "sc_rx_close_idle",
    "ws_backend_overflow", "ws_client_overflow", "ws_thread_overflow", "ws_session_overflow",
    "bans_lurker_obj_killed_cutoff", "bans_lurker_contention", "bans_persisted_bytes",
    "bans_persisted_fragmentation", "vmods", "n_gzip", "n_gunzip", "n_test_gunzip", "esi_req",
    "sess_queued", "sess_dropped", "req_dropped", "thread_queue_len", "pools", "threads_limited",
    "threads_destroyed", "threads_failed",
)

# The manager process's counters (MGT.*): its "child" is our serving side, started and stopped by the
# CLI (start, stop) and restarted after debug.panic.worker.
MGT_COUNTERS = ("uptime", "child_start", "child_exit", "child_stop", "child_died", "child_dump", "child_panic")


class Counters:
    """MAIN.* counters as attributes; storage and backend counters are added by name."""

    def __init__(self) -> None:
        for name in MAIN_COUNTERS:
            setattr(self, name, 0)
        for name in MGT_COUNTERS:
            setattr(self, "mgt_" + name, 0)
        self.extra: dict[str, int] = {}

    def snapshot(self) -> dict[str, int]:
        """Every counter by its varnishstat name."""
        out = {f"MGT.{name}": getattr(self, "mgt_" + name) for name in MGT_COUNTERS}
        out.update((f"MAIN.{name}", getattr(self, name)) for name in MAIN_COUNTERS)
        out.update(self.extra)
        return out
