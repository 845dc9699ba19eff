"""Shard director parameters (alt, healthy, warmup, rampup, an empty shard) in-process, against the
choices and log lines varnishd 7.1.1 gave for the same VCL (a .vtc; the last test re-runs it when
varnishtest is installed). The paths the mutation run (tools/mutate.py) found without a test.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

from cacheserver.backends import set_admin_health
from vcl.compiler import compile_vcl
from vcl.runtime import Context, HttpMessage, VCLFailure

KEYS = [0, 1 << 30, 2 << 30, 3 << 30, 4294967295, 12345, 99999999, 2000000000]
# resp.http.<column> = sh.backend(<arguments>) for each key, joined with ':'
COLUMNS = {
    "k": "by=KEY, key={k}",
    "a1": "by=KEY, key={k}, alt=1",
    "a2": "by=KEY, key={k}, alt=2",
    "big": "by=KEY, key={k}, alt=10",
    "ign": "by=KEY, key={k}, healthy=IGNORE",
    "ign1": "by=KEY, key={k}, alt=1, healthy=IGNORE",
    "all1": "by=KEY, key={k}, alt=1, healthy=ALL",
    "warm": "by=KEY, key={k}, warmup=1.0",
    "warm0": "by=KEY, key={k}, warmup=0.0, rampup=false",
}
SETS = "\n".join(f"\tset resp.http.{c} = " + ' + ":" + '.join(f"sh.backend({a.format(k=k)})" for k in KEYS) + ";"
                 for c, a in COLUMNS.items())
BACKENDS = "".join(f'backend s{i} {{ .host = "127.0.0.1"; .port = "9"; }}\n' for i in range(1, 5))
VCL_BODY = (
    "import directors;\n" + BACKENDS +
    "sub vcl_init {\n\tnew sh = directors.shard();\n" + "".join(f"\tsh.add_backend(s{i});\n" for i in range(1, 5)) +
    "\tsh.reconfigure();\n\tnew e = directors.shard();\n}\n"
    "sub vcl_recv { return (synth(200)); }\n"
    "sub vcl_synth {\n" + SETS + '\n\tset resp.http.e = "" + e.backend();\n}\n')

# varnishd 7.1.1's answers: all healthy, then with s2 sick (backend.set_health s2 sick)
RECORDED = {
    False: {"k": "s1:s1:s1:s4:s4:s1:s3:s1", "a1": "s4:s4:s2:s2:s1:s4:s1:s2", "a2": "s3:s3:s4:s3:s3:s3:s4:s3",
            "big": "s2:s2:s3:s1:s2:s2:s2:s4", "ign": "s1:s1:s1:s4:s4:s1:s3:s1", "ign1": "s4:s4:s2:s2:s1:s4:s1:s2",
            "all1": "s4:s4:s2:s2:s1:s4:s1:s2", "warm": "s4:s4:s2:s2:s1:s4:s1:s2",
            "warm0": "s1:s1:s1:s4:s4:s1:s3:s1", "e": ""},
    True: {"k": "s1:s1:s1:s4:s4:s1:s3:s1", "a1": "s4:s4:s4:s3:s1:s4:s1:s3", "a2": "s3:s3:s4:s3:s3:s3:s4:s3",
           "big": "s4:s4:s3:s1:s1:s4:s1:s4", "ign": "s1:s1:s1:s4:s4:s1:s3:s1", "ign1": "s4:s4:s2:s2:s1:s4:s1:s2",
           "all1": "s4:s4:s4:s3:s1:s4:s1:s3", "warm": "s4:s4:s4:s3:s1:s4:s1:s3",
           "warm0": "s1:s1:s1:s4:s4:s1:s3:s1", "e": ""},
}
# the task's log: one Error per alt=10 pick (8 keys), then the empty shard's
LOG = [("Error", "vmod_directors: shard sh: parameter alt=10 limited to 3")] * 8 + \
    [("Error", "vmod_directors: shard e: no backends")]


def ours(s2_sick: bool) -> tuple[dict[str, str], list[tuple[str, str]]]:
    vcl = compile_vcl("vcl 4.1;\n" + VCL_BODY, "shard.vcl")
    assert vcl.init(Context(method="vcl_init", vcl=vcl)).name == "ok"
    if s2_sick:
        set_admin_health(vcl.backends["s2"], "sick")
    req = HttpMessage("GET", "/")
    ctx = Context(method="vcl_synth", req=req, req_top=req, resp=HttpMessage(status=200), vcl=vcl)
    ctx.log = []
    vcl.subs["vcl_synth"](ctx)
    return {c: ctx.resp.headers.get(c) for c in RECORDED[False]}, [t for t in ctx.log if t[0] == "Error"]


@pytest.mark.parametrize("s2_sick", [False, True])
def test_shard_parameters_choose_what_varnishd_chose(s2_sick):
    assert ours(s2_sick) == (RECORDED[s2_sick], LOG)


def test_negative_alt_fails_the_task():
    vcl = compile_vcl("vcl 4.1;\n" + VCL_BODY.replace(SETS, "\tset resp.http.x = sh.backend(alt=-1);"), "neg.vcl")
    assert vcl.init(Context(method="vcl_init", vcl=vcl)).name == "ok"
    req = HttpMessage("GET", "/")
    with pytest.raises(VCLFailure, match=r"^vmod_directors: shard sh: shard.backend\(\) invalid alt argument -1$"):
        vcl.subs["vcl_synth"](Context(method="vcl_synth", req=req, req_top=req, resp=HttpMessage(status=200),
                                      vcl=vcl))


VARNISHTEST = shutil.which("varnishtest")


@pytest.mark.skipif(VARNISHTEST is None, reason="varnishtest not installed")
def test_recorded_answers_are_varnishds():
    vtc = ('varnishtest "shard parameters"\nvarnish v1 -vcl {\n' + VCL_BODY + "} -start\n"
           "client c1 {\n\ttxreq\n\trxresp\n} -run\n"
           'varnish v1 -cliok "backend.set_health s2 sick"\nclient c1 -run\n')
    with tempfile.TemporaryDirectory(dir="/tmp") as tmp:
        os.chmod(tmp, 0o755)
        path = Path(tmp) / "shard.vtc"
        path.write_text(vtc)
        run = subprocess.run([VARNISHTEST, "-v", "-t", "60", str(path)], capture_output=True, text=True, timeout=90)
    out = run.stdout + run.stderr
    headers = re.findall(r"c1 +rxhdr\|(\w+): (.*?)\\r$", out, re.M)
    answers = {False: dict(headers[:len(headers) // 2]), True: dict(headers[len(headers) // 2:])}
    assert {k: {c: v[c] for c in RECORDED[False]} for k, v in answers.items()} == RECORDED
    errors = re.findall(r"^\*+ +v1 +vsl\| +1001 Error +c (.*)$", out, re.M)
    assert [("Error", e) for e in errors] == LOG
