"""The shared log's ring: records round-trip, wrap around, a lapped reader is told, huge records are cut."""

from __future__ import annotations

import os

import pytest

from cacheserver import vsl
from cacheserver.vsl import LogError, Overrun, Record, VslReader, VslWriter


def _records(reader: VslReader) -> list:
    return list(reader.read())


def test_round_trip(tmp_path):
    w = VslWriter(tmp_path / vsl.FILE_NAME, size=65536)
    r = VslReader(tmp_path)
    w.write(1001, "c", [("Begin", "req 1000 rxreq"), ("ReqURL", "/a b"), ("End", "")])
    got = _records(r)
    assert [(x.vxid, x.kind, x.tag, x.text) for x in got] == [
        (1001, "c", "Begin", "req 1000 rxreq"), (1001, "c", "ReqURL", "/a b"), (1001, "c", "End", "")]
    assert _records(r) == []
    w.write(1002, "b", [("BereqURL", "/x")])
    assert [x.text for x in _records(r)] == ["/x"]


def test_tail_starts_at_the_newest(tmp_path):
    w = VslWriter(tmp_path / vsl.FILE_NAME, size=65536)
    w.write(1, "c", [("Begin", "old")])
    r = VslReader(tmp_path, tail=True)
    assert _records(r) == []
    w.write(2, "c", [("Begin", "new")])
    assert [x.text for x in _records(r)] == ["new"]


def test_wrap_around_keeps_order(tmp_path):
    w = VslWriter(tmp_path / vsl.FILE_NAME, size=65536)
    r = VslReader(tmp_path)
    seen = []
    for i in range(5000):               # ~10 laps of the ring, read as it goes
        w.write(i, "c", [("VCL_Log", "x" * (i % 97)), ("End", "")])
        if i % 50 == 0:
            seen += [x.vxid for x in _records(r) if isinstance(x, Record) and x.tag == "End"]
    seen += [x.vxid for x in _records(r) if isinstance(x, Record) and x.tag == "End"]
    assert seen == list(range(5000))
    assert w.head > 5 * w.size


def test_a_reader_that_falls_behind_is_told(tmp_path):
    w = VslWriter(tmp_path / vsl.FILE_NAME, size=65536)
    r = VslReader(tmp_path)
    for i in range(3000):
        w.write(i, "c", [("VCL_Log", "y" * 60)])
    got = _records(r)
    assert isinstance(got[0], Overrun) and got[0].lost > 0
    vxids = [x.vxid for x in got if isinstance(x, Record)]
    # what it then reads is whole, in order, and ends with the newest
    assert vxids == list(range(vxids[0], 3000))
    assert len(vxids) * 80 < 65536
    # the oldest-start reader also begins at a whole chunk
    r2 = VslReader(tmp_path)
    first = next(iter(r2.read()))
    assert isinstance(first, Record) and first.text == "y" * 60


def test_a_record_too_big_for_a_chunk_is_cut_to_reclen(tmp_path):
    w = VslWriter(tmp_path / vsl.FILE_NAME, size=65536, reclen=255)
    r = VslReader(tmp_path)
    huge = [("VCL_Log", "z" * 100000), ("ReqHeader", "X: " + "q" * 5000)] + [("Debug", str(i)) for i in range(2000)]
    w.write(7, "c", huge)
    got = [x for x in _records(r) if isinstance(x, Record)]
    assert got[0].text == "z" * 254          # vsl_reclen - 1 bytes, as varnishd's VSLb
    assert got[1].text == ("X: " + "q" * 5000)[:254]
    assert [x.text for x in got[2:]] == [str(i) for i in range(2000)]
    assert w.head <= w.size   # never more than the ring


def test_reader_truncates_to_reclen(tmp_path):
    # varnishd (vsl_reclen 20) logs "ReqURL /0123456789abcdefgh": 19 bytes, a character may be cut
    w = VslWriter(tmp_path / vsl.FILE_NAME, size=65536, reclen=20)
    r = VslReader(tmp_path)
    w.write(1, "c", [("ReqURL", "/" + "a" * 50), ("VCL_Log", "\u00e9" * 20)])
    got = _records(r)
    assert got[0].text == "/" + "a" * 18
    assert got[1].text.encode("utf-8", "surrogateescape") == ("\u00e9" * 20).encode()[:19]


def test_reclen_changed_at_run_time_applies_to_records_written_after(tmp_path):
    class Params:
        vsl_mask = ""
        vsl_reclen = 255.0

    w = VslWriter(tmp_path / vsl.FILE_NAME, size=65536, reclen=255)
    w.params = params = Params()
    r = VslReader(tmp_path)
    w.write(1, "c", [("VCL_Log", "x" * 100)])
    params.vsl_reclen = 16.0
    w.write(2, "c", [("VCL_Log", "x" * 100)])
    params.vsl_reclen = 255.0
    w.write(3, "c", [("VCL_Log", "x" * 100)])
    assert [len(x.text) for x in _records(r)] == [100, 15, 100]


def test_missing_and_stale_work_directory(tmp_path):
    with pytest.raises(LogError, match="does not exist"):
        VslReader(tmp_path / "nope")
    with pytest.raises(LogError, match="missing"):
        VslReader(tmp_path)
    (tmp_path / vsl.FILE_NAME).write_bytes(b"junk" * 2000)
    with pytest.raises(LogError, match="not a cacheserver log"):
        VslReader(tmp_path)
    w = VslWriter(tmp_path / vsl.FILE_NAME, size=65536)
    r = VslReader(tmp_path)
    assert r.stale() is None
    w.close()
    assert "stopped" in r.stale()
    # a log left by a process that died without closing it
    w2 = VslWriter(tmp_path / vsl.FILE_NAME, size=65536)
    w2.mm[16:24] = (2 ** 22 + 12345).to_bytes(8, "little")   # a pid that does not exist
    r2 = VslReader(tmp_path)
    assert "stale" in r2.stale()
    assert os.path.exists(tmp_path / vsl.FILE_NAME)


def test_vsl_mask_leaves_masked_tags_out(tmp_path):
    """vsl_mask as varnishd applies it: the default masks Debug; +Debug unmasks it; a tag masked beyond
    the default is taken out of pre-joined runs too; the parameter is read as records are written."""
    from cacheserver.params import Params

    params = Params()
    w = VslWriter(tmp_path / vsl.FILE_NAME, size=65536)
    w.params = params
    r = VslReader(tmp_path)
    recs = [("Begin", "req 1 rxreq\0Timestamp Start: 1.0 0.0 0.0"), ("Debug", "shard"), ("End", "")]
    w.write(1, "c", recs)
    assert [x.tag for x in _records(r)] == ["Begin", "Timestamp", "End"]
    params.set("vsl_mask", "+Debug")
    w.write(2, "c", recs)
    assert [x.tag for x in _records(r)] == ["Begin", "Timestamp", "Debug", "End"]
    params.set("vsl_mask", "-Timestamp")
    w.write(3, "c", recs)
    assert [(x.tag, x.text) for x in _records(r)] == [("Begin", "req 1 rxreq"), ("Debug", "shard"), ("End", "")]


def test_an_encoded_tail_follows_the_records_and_obeys_the_mask(tmp_path):
    """write(..., tail): records already encoded (a template hit's) come after the list, alone when the
    list is empty, and a tag masked beyond the default is taken out of them too."""
    from cacheserver.params import Params

    params = Params()
    w = VslWriter(tmp_path / vsl.FILE_NAME, size=65536)
    w.params = params
    r = VslReader(tmp_path)
    tail = "RespStatus 200\0Timestamp Resp: 2.0 1.0 1.0\0RespHeader X: \xe9\0End ".encode()
    w.write(1, "c", [("Begin", "req 1 rxreq"), ("Debug", "x")], tail)
    assert [(x.tag, x.text) for x in _records(r)] == [
        ("Begin", "req 1 rxreq"), ("RespStatus", "200"), ("Timestamp", "Resp: 2.0 1.0 1.0"),
        ("RespHeader", "X: \xe9"), ("End", "")]
    w.write(2, "c", [("Debug", "x")], tail)
    assert [x.tag for x in _records(r)] == ["RespStatus", "Timestamp", "RespHeader", "End"]
    params.set("vsl_mask", "-Timestamp")
    w.write(3, "c", [("Begin", "req 1 rxreq")], tail)
    assert [(x.tag, x.text) for x in _records(r)] == [
        ("Begin", "req 1 rxreq"), ("RespStatus", "200"), ("RespHeader", "X: \xe9"), ("End", "")]


def test_raw_times_read_as_varnishd_prints_them(tmp_path):
    # the writer leaves Timestamp and Hit times raw (vsl.floats); every reader sees them "%.6f"
    w = VslWriter(tmp_path / vsl.FILE_NAME, size=65536, reclen=24)
    r = VslReader(tmp_path)
    t = 1764521234.1234565
    w.write(7, "c", [("Begin", "req 6 rxreq\0Timestamp Start: %s 0.000000 0.000000" % vsl.float1(t)),
                     ("Timestamp", "Resp: " + vsl.floats(t, 0.0000005, 2.5)),
                     ("Hit", "5 " + vsl.floats(119.9999996, 10.0, -1.0)),
                     ("VCL_Log", "not ours: " + vsl.floats(1.0, 2.0, 3.0)),         # other tags: as written
                     ("Timestamp", "odd: \x01abc")],                               # not a run of doubles
            tail=b"Timestamp Process: " + vsl.floats_bytes(t, 1.0, 0.25))
    texts = [x.text for x in _records(r)]
    assert texts == [x[:23] for x in (                     # cut to reclen - 1 once printed
        "req 6 rxreq", "Start: %.6f 0.000000 0.000000" % t, "Resp: %.6f %.6f %.6f" % (t, 0.0000005, 2.5),
        "5 120.000000 10.000000 -1.000000", "not ours: " + vsl.floats(1.0, 2.0, 3.0),
        "odd: \x01abc", "Process: %.6f 1.000000 0.250000" % t)]
    big = [("Timestamp", "Big: " + vsl.floats(t, 1.0, 2.0))] + [("ReqURL", "u" * 200)] * 100
    w.max_chunk = 4096                          # oversized: records cut by the writer, times printed first
    w.write(8, "c", big)
    assert [x.text for x in _records(r)][0] == ("Big: %.6f 1.000000 2.000000" % t)[:23]
