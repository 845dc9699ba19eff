"""The storage's shared-log records: ExpKill only when unmasked, ExpBan from the lurker, the Notice
for many variants. (Their text and place next to varnishd's: tests/vtc/fid_vsl_expban.vtc,
fid_vsl_variants.vtc, which also run against varnishd.)"""

from __future__ import annotations

import time

from cacheserver.counters import Counters
from cacheserver.params import Params
from cacheserver.storage import MISS, Storage
from vcl.runtime import Headers, HttpMessage


class Log:
    def __init__(self, unmasked: set[str]) -> None:
        self.unmasked = unmasked
        self.records: list[tuple[int, str, str]] = []

    def wants(self, tag: str) -> bool:
        return tag in self.unmasked

    def write(self, vxid: int, kind: str, records: list) -> None:
        self.records += [(vxid, tag, text) for tag, text in records]     # everything made


def _stored(storage: Storage, url: str, xid: int, headers: list | None = None, vary: str | None = None,
            obj: list | None = None):
    req = HttpMessage("GET", url, headers=Headers(headers or []))
    r = storage.lookup(url.encode(), req, time.time())
    assert r.kind == MISS
    oc = r.busy
    oc.xid = xid
    fields = [["Content-Length", "1"]] + ([["Vary", vary]] if vary else []) + (obj or [])
    oc.http = HttpMessage(status=200, headers=Headers(fields))
    oc.t_origin, oc.ttl, oc.grace, oc.keep = time.time(), 100.0, 0.0, 0.0
    oc.append(b"x")
    storage.unbusy(oc, req, vary, None)
    oc.finish(True)
    return oc


def test_expkill_records_are_not_made_while_masked():
    st = Storage(1 << 20, Counters(), Params())
    st.vsl = log = Log(set())
    _stored(st, "/a", 1001)
    assert log.records == []
    log.unmasked.add("ExpKill")
    _stored(st, "/b", 1003)
    texts = [text for _, tag, text in log.records if tag == "ExpKill"]
    # varnishd 7.1: the woken expiry thread looks at its heap's root (/a) before its inbox (/b)
    assert [t.split(" ", 1)[0] for t in texts] == ["EXP_expire", "EXP_Inbox", "EXP_When", "EXP_expire"]
    assert texts[1].startswith("EXP_Inbox flg=1e ") and texts[1].endswith(" e=0.000000 f=0x0")


def test_the_lurker_logs_what_it_kills_under_vxid_0():
    params = Params()
    params.set("ban_lurker_age", "0")
    st = Storage(1 << 20, Counters(), params)
    st.vsl = log = Log({"ExpBan", "ExpKill"})
    _stored(st, "/a", 1001, obj=[["X", "a"]])
    _stored(st, "/b", 1003, obj=[["X", "b"]])
    st.ban("obj.http.x == b")
    st._lurk()
    assert (0, "ExpBan", "1001 banned by lurker") not in log.records
    assert {r for r in log.records if r[1] == "ExpBan"} == {(0, "ExpBan", "1003 banned by lurker")}
    assert any(tag == "ExpKill" and text.startswith("EXP_Inbox flg=26 ") and text.endswith(" f=0x80")
               for _, tag, text in log.records)


def test_notice_for_vary_notice_or_more_variants_that_do_not_match():
    params = Params()
    params.set("vary_notice", "2")
    st = Storage(1 << 20, Counters(), params)
    for i in range(3):
        _stored(st, "/v", 1001 + 2 * i, [["X-V", str(i)]], vary="X-V")
    logs = []
    for value in ("0", "1", "2", "9"):
        log: list = []
        st.lookup(b"/v", HttpMessage("GET", "/v", headers=Headers([["X-V", value]])), time.time(), log=log)
        logs.append(log)
    # objects are looked at newest first: "2" is met at once, "0" after two, "9" after three
    assert logs[2] == []
    assert logs[1] == []                                   # one mismatch: below vary_notice
    assert logs[0] == [("Notice", "vsl: High number of variants (2)")]
    assert logs[3] == [("Notice", "vsl: High number of variants (3)")]
