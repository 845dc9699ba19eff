"""Shard director parameters (alt, healthy, warmup, rampup, an empty shard) in-process, against the
choices and log lines varnishd 7.1.1 gave for the same VCL (a .vtc; the last test re-runs it when
varnishtest is installed). The paths the mutation run (tools/mutate.py) found without a test.
"""

from __future__ import annotations

import re

import pytest
from inproc import inproc_cache_factory, wait_for
from real_varnishtest import VARNISHTEST, run_varnishtest
from test_cache_support import read_message

from cacheserver.backends import set_admin_health
from vcl.compiler import compile_vcl
from vcl.rtlib import end_task
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
    # warmup where alt, IGNORE or rampup=false leave the chosen backend alone
    "a1w": "by=KEY, key={k}, alt=1, warmup=1.0",
    "ignw": "by=KEY, key={k}, healthy=IGNORE, warmup=1.0",
    "w1r": "by=KEY, key={k}, warmup=1.0, rampup=false",
    "a3": "by=KEY, key={k}, alt=3",                 # the last alternative: no "limited to" Error
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
            "warm0": "s1:s1:s1:s4:s4:s1:s3:s1", "e": "",
            "a1w": "s4:s4:s2:s2:s1:s4:s1:s2", "ignw": "s1:s1:s1:s4:s4:s1:s3:s1", "w1r": "s4:s4:s2:s2:s1:s4:s1:s2",
            "a3": "s2:s2:s3:s1:s2:s2:s2:s4"},
    True: {"k": "s1:s1:s1:s4:s4:s1:s3:s1", "a1": "s4:s4:s4:s3:s1:s4:s1:s3", "a2": "s3:s3:s4:s3:s3:s3:s4:s3",
           "big": "s4:s4:s3:s1:s1:s4:s1:s4", "ign": "s1:s1:s1:s4:s4:s1:s3:s1", "ign1": "s4:s4:s2:s2:s1:s4:s1:s2",
           "all1": "s4:s4:s4:s3:s1:s4:s1:s3", "warm": "s4:s4:s4:s3:s1:s4:s1:s3",
           "warm0": "s1:s1:s1:s4:s4:s1:s3:s1", "e": "",
           "a1w": "s4:s4:s4:s3:s1:s4:s1:s3", "ignw": "s1:s1:s1:s4:s4:s1:s3:s1", "w1r": "s4:s4:s4:s3:s1:s4:s1:s3",
           "a3": "s4:s4:s3:s1:s1:s4:s1:s4"},
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


def test_a_lazy_shard_picks_with_the_tasks_parameters_when_resolved():
    """sh.backend(resolve=LAZY, ...) in a backend task picks when resolved, with those parameters: alt=1,
    healthy=IGNORE with s2 sick at key 2<<30 is s2, and alt=10 logs its Error, as the same picks made
    at once did on varnishd 7.1.1 (RECORDED's ign1 column, LOG)."""
    vcl = compile_vcl("vcl 4.1;\nimport directors;\n" + BACKENDS + "sub vcl_init {\n\tnew sh = directors.shard();\n"
                      + "".join(f"\tsh.add_backend(s{i});\n" for i in range(1, 5)) + "\tsh.reconfigure();\n}\n"
                      "sub vcl_backend_fetch {\n"
                      f"\tset bereq.backend = sh.backend(resolve=LAZY, by=KEY, key={2 << 30}, alt=1, healthy=IGNORE);\n"
                      "\tset bereq.http.x = bereq.backend.resolve();\n"
                      f"\tset bereq.backend = sh.backend(resolve=LAZY, by=KEY, key={2 << 30}, alt=10);\n"
                      "\tset bereq.http.y = bereq.backend.resolve();\n}\n", "lazy.vcl")
    assert vcl.init(Context(method="vcl_init", vcl=vcl)).name == "ok"
    set_admin_health(vcl.backends["s2"], "sick")
    ctx = Context(method="vcl_backend_fetch", bereq=HttpMessage("GET", "/"), vcl=vcl)
    ctx.log = []
    vcl.subs["vcl_backend_fetch"](ctx)
    assert (ctx.bereq.headers.get("x"), ctx.bereq.headers.get("y")) == ("s2", RECORDED[True]["big"].split(":")[2])
    assert [t for t in ctx.log if t[0] == "Error"] == LOG[:1]


def test_an_empty_key_blob_is_key_0_with_an_error_in_the_tasks_log():
    """p.set(by=BLOB, key_blob=<empty>) in a backend task: key 0 and this Error record (varnishd 7.1.1,
    a .vtc)."""
    vcl = compile_vcl("vcl 4.1;\nimport directors;\nimport blob;\nbackend s1 none;\n"
                      "sub vcl_init { new p = directors.shard_param(); }\nsub vcl_backend_fetch {\n"
                      '\tp.set(by=BLOB, key_blob=blob.decode(HEX, encoded=""));\n\tset bereq.http.k = p.get_key();\n}\n',
                      "blobkey.vcl")
    assert vcl.init(Context(method="vcl_init", vcl=vcl)).name == "ok"
    ctx = Context(method="vcl_backend_fetch", bereq=HttpMessage("GET", "/"), vcl=vcl)
    ctx.log = []
    vcl.subs["vcl_backend_fetch"](ctx)
    assert ctx.bereq.headers.get("k") == "0"
    assert [t for t in ctx.log if t[0] == "Error"] == [
        ("Error", "vmod_directors: shard p: shard_param.set() by=BLOB but no or empty key_blob - using key 0")]


def test_negative_alt_fails_the_task():
    vcl = compile_vcl("vcl 4.1;\n" + VCL_BODY.replace(SETS, "\tset resp.http.x = sh.backend(alt=-1);"), "neg.vcl")
    assert vcl.init(Context(method="vcl_init", vcl=vcl)).name == "ok"
    req = HttpMessage("GET", "/")
    with pytest.raises(VCLFailure, match=r"^vmod_directors: shard sh: shard.backend\(\) invalid alt argument -1$"):
        vcl.subs["vcl_synth"](Context(method="vcl_synth", req=req, req_top=req, resp=HttpMessage(status=200),
                                      vcl=vcl))




@pytest.mark.skipif(VARNISHTEST is None, reason="varnishtest not installed")
def test_recorded_answers_are_varnishds():
    vtc = ('varnishtest "shard parameters"\nvarnish v1 -vcl {\n' + VCL_BODY + "} -start\n"
           "client c1 {\n\ttxreq\n\trxresp\n} -run\n"
           'varnish v1 -cliok "backend.set_health s2 sick"\nclient c1 -run\n')
    out = run_varnishtest(vtc, "shard")
    headers = re.findall(r"c1 +rxhdr\|(\w+): (.*?)\\r$", out, re.M)
    answers = {False: dict(headers[:len(headers) // 2]), True: dict(headers[len(headers) // 2:])}
    assert {k: {c: v[c] for c in RECORDED[False]} for k, v in answers.items()} == RECORDED
    errors = re.findall(r"^\*+ +v1 +vsl\| +1001 Error +c (.*)$", out, re.M)
    assert [("Error", e) for e in errors] == LOG


# sh.backend(...) arguments varnishd 7.1.1 refuses: the task fails with this VCL_Error
REFUSED = [
    ("by=KEY", "shard.backend() missing key argument with by=KEY"),
    ("by=KEY, key=-1", "shard.backend() invalid key argument -1 with by=KEY"),
    ("by=KEY, key=4294967296", "shard.backend() invalid key argument 4294967296 with by=KEY"),
    ("by=BLOB", "shard.backend() missing key_blob argument with by=BLOB"),
    ("by=HASH, key=5", "shard.backend() key and key_blob arguments are invalid with by=HASH"),
    ('by=URL, key_blob=blob.decode(HEX, encoded="01020304")',
     "shard.backend() key and key_blob arguments are invalid with by=URL"),
    ("warmup=-0.5", "shard.backend() invalid warmup argument -0.500000"),
    ("warmup=1.5", "shard.backend() invalid warmup argument 1.500000"),
    ("resolve=LAZY, by=KEY, key=1", ".backend(resolve=LAZY) with other parameters can only be used in backend/pipe "
                                    "context"),
]
# and those it takes: (arguments, backend chosen, Error logged)
TAKEN = [
    ('by=BLOB, key_blob=blob.decode(encoded="")', "s1",
     "vmod_directors: shard sh: shard.backend() by=BLOB but no or empty key_blob - using key 0"),
    ("warmup=-1", "s2", None),
]
ARGS_VCL = ("import directors;\nimport blob;\n" + BACKENDS +
            "sub vcl_init {\n\tnew sh = directors.shard();\n" + "".join(f"\tsh.add_backend(s{i});\n" for i in range(1, 5)) +
            "\tsh.reconfigure();\n}\nsub vcl_recv { return (synth(200)); }\nsub vcl_synth {\n" +
            "\n".join(f'\tif (req.url == "/{i}") {{ set resp.http.x = "" + sh.backend({args}); }}'
                      for i, (args, *_) in enumerate(REFUSED + TAKEN)) + "\n}\n")


def synth_url(url: str) -> Context:
    vcl = compile_vcl("vcl 4.1;\n" + ARGS_VCL, "args.vcl")
    assert vcl.init(Context(method="vcl_init", vcl=vcl)).name == "ok"
    req = HttpMessage("GET", url)
    ctx = Context(method="vcl_synth", req=req, req_top=req, resp=HttpMessage(status=200), vcl=vcl)
    ctx.log = []
    vcl.subs["vcl_synth"](ctx)
    return ctx


@pytest.mark.parametrize("i", range(len(REFUSED)), ids=[args for args, _ in REFUSED])
def test_refused_backend_arguments(i):
    with pytest.raises(VCLFailure) as info:
        synth_url(f"/{i}")
    assert str(info.value) == "vmod_directors: shard sh: " + REFUSED[i][1]


@pytest.mark.parametrize("i", range(len(TAKEN)), ids=[args for args, *_ in TAKEN])
def test_taken_backend_arguments(i):
    ctx = synth_url(f"/{len(REFUSED) + i}")
    _, backend, error = TAKEN[i]
    assert ctx.resp.headers.get("x") == backend
    assert [text for tag, text in ctx.log if tag == "Error"] == ([error] if error else [])


@pytest.mark.skipif(VARNISHTEST is None, reason="varnishtest not installed")
def test_argument_checks_are_varnishds():
    cases = REFUSED + TAKEN
    clients = "".join(f"client c{i} {{\n\ttxreq -url /{i}\n\trxresp\n}} -run\n" for i in range(len(cases)))
    vtc = 'varnishtest "shard arguments"\nvarnish v1 -vcl {\n' + ARGS_VCL + "} -start\n" + clients
    out = run_varnishtest(vtc, "args")
    # each request's VCL_Error or Error line and chosen backend, by request (vxid 1001, 1003, ...)
    errors = dict(re.findall(r"vsl\| +(\d+) (?:VCL_Error|Error) +c vmod_directors: shard sh: (.*)$", out, re.M))
    chosen = dict(re.findall(r"^\*+ +c(\d+) +rxhdr\|x: (.*?)\\r$", out, re.M))
    for i, (_, msg) in enumerate(REFUSED):
        assert errors.get(str(1001 + 2 * i)) == msg
    for i, (_, backend, error) in enumerate(TAKEN, start=len(REFUSED)):
        assert chosen.get(str(i)) == backend
        assert errors.get(str(1001 + 2 * i)) == (error.split(": ", 2)[2] if error else None)


# vcl_init settings: set_warmup out of [0, 1) is ignored with a Notice, clear() drops the backends
# added before it, shard_param.clear() restores the defaults (varnishd 7.1.1's answers)
INIT_VCL = ("import directors;\n" + "".join(BACKENDS.splitlines(keepends=True)[:2]) + """sub vcl_init {
	new sh = directors.shard();
	sh.add_backend(s1);
	sh.add_backend(s2);
	sh.set_warmup(1.0);
	sh.set_warmup(-0.1);
	sh.reconfigure();
	new w = directors.shard();
	w.add_backend(s1);
	w.add_backend(s2);
	w.set_warmup(0.5);
	w.set_warmup(0.0);
	w.set_warmup(0.999);
	w.reconfigure();
	new cl = directors.shard();
	cl.add_backend(s1);
	cl.clear();
	cl.add_backend(s2);
	cl.add_backend(s2);
	cl.reconfigure();
	new p = directors.shard_param();
	p.set(by=KEY, key=5, alt=1, warmup=0.5, rampup=false, healthy=ALL);
	p.clear();
}
sub vcl_recv { return (synth(200)); }
sub vcl_synth {
	set resp.http.sh = sh.backend(by=KEY, key=0) + ":" + sh.backend(by=KEY, key=3000000000);
	set resp.http.w = w.backend(by=KEY, key=0) + ":" + w.backend(by=KEY, key=3000000000);
	set resp.http.cl = cl.backend();
	set resp.http.p = p.get_by() + ":" + p.get_key() + ":" + p.get_alt() + ":" + p.get_warmup() + ":"
	+ p.get_rampup() + ":" + p.get_healthy();
}
""")
INIT_ANSWERS = {"sh": "s1:s2", "w": "s2:s1", "cl": "s2", "p": "HASH:4053860029:0:-1.000:true:CHOSEN"}
INIT_NOTICES = ["vmod_directors: shard sh: .set_warmup(1.000000) ignored",
                "vmod_directors: shard sh: .set_warmup(-0.100000) ignored",
                "vmod_directors: shard cl: backend s2 already exists - skipping"]


def test_init_settings():
    vcl = compile_vcl("vcl 4.1;\n" + INIT_VCL, "init.vcl")
    init = Context(method="vcl_init", vcl=vcl)
    init.log = []
    assert vcl.init(init).name == "ok"
    assert [text for tag, text in init.log if tag == "Notice"] == INIT_NOTICES
    req = HttpMessage("GET", "/")
    ctx = Context(method="vcl_synth", req=req, req_top=req, resp=HttpMessage(status=200), vcl=vcl)
    vcl.subs["vcl_synth"](ctx)
    assert {k: ctx.resp.headers.get(k) for k in INIT_ANSWERS} == INIT_ANSWERS


@pytest.mark.skipif(VARNISHTEST is None, reason="varnishtest not installed")
def test_init_settings_are_varnishds():
    vtc = ('varnishtest "shard init"\nvarnish v1 -vcl {\n' + INIT_VCL + "} -start\n"
           "client c1 {\n\ttxreq\n\trxresp\n} -run\n")
    out = run_varnishtest(vtc, "init")
    answers = dict(re.findall(r"c1 +rxhdr\|(\w+): (.*?)\\r$", out, re.M))
    assert {k: answers.get(k) for k in INIT_ANSWERS} == INIT_ANSWERS
    assert re.findall(r"vsl\| +0 Notice +- (.*)$", out, re.M) == INIT_NOTICES


# round_robin, fallback (sticky, members removed around the current one), hash and random by weight, lookup():
# what varnishd 7.1.1 chose, request by request, as admin health changes between them
SIMPLE_VCL = """import directors;
import std;
backend s1 { .host = "127.0.0.1"; .port = "9"; }
backend s2 { .host = "127.0.0.1"; .port = "9"; }
backend s3 { .host = "127.0.0.1"; .port = "9"; }
sub vcl_init {
	new rr = directors.round_robin();
	rr.add_backend(s1);
	rr.add_backend(s2);
	rr.add_backend(s3);
	new er = directors.round_robin();
	er.remove_backend(s1);
	new fa = directors.fallback(sticky=true);
	new fb = directors.fallback(sticky=true);
	new fc = directors.fallback(sticky=true);
	new fd = directors.fallback();
	fa.add_backend(s1);
	fa.add_backend(s2);
	fa.add_backend(s3);
	fb.add_backend(s1);
	fb.add_backend(s2);
	fb.add_backend(s3);
	fc.add_backend(s1);
	fc.add_backend(s2);
	fc.add_backend(s3);
	fd.add_backend(s1);
	fd.add_backend(s2);
	new hw = directors.hash();
	hw.add_backend(s1, 3142119087.0);
	hw.add_backend(s2, 1152848209.0);
	new h0 = directors.hash();
	h0.add_backend(s1, 0.0);
	new rd = directors.random();
	rd.add_backend(s3, 1.0);
	new lk = directors.round_robin();
	lk.add_backend(directors.lookup("s2"));
	new ra = directors.round_robin();
	ra.add_backend(s1);
	ra.add_backend(s2);
	ra.add_backend(s3);
	new sh = directors.shard();
	sh.add_backend(s1);
	sh.add_backend(s2);
	sh.reconfigure();
}
sub vcl_recv { return (synth(200)); }
sub vcl_synth {
	if (req.url == "/rr") {
		set resp.http.x = rr.backend().resolve() + ":" + rr.backend().resolve();
		rr.remove_backend(s1);
		set resp.http.x = resp.http.x + ":" + rr.backend().resolve() + ":" + rr.backend().resolve() + ":"
			+ er.backend().resolve();
	}
	if (req.url == "/all") {
		set resp.http.x = fa.backend().resolve() + ":" + fb.backend().resolve() + ":" + fd.backend().resolve()
			+ ":" + hw.backend("a") + ":" + h0.backend("a") + ":" + rd.backend().resolve() + ":"
			+ lk.backend().resolve() + ":" + std.healthy(rd.backend()) + ":" + std.healthy(fd.backend());
	}
	if (req.url == "/fc") {
		set resp.http.x = fc.backend().resolve();
	}
	if (req.url == "/rm") {
		fa.remove_backend(s1);
		fb.remove_backend(s2);
		fc.remove_backend(s3);
		set resp.http.x = fa.backend().resolve() + ":" + fb.backend().resolve() + ":" + fc.backend().resolve();
	}
	if (req.url == "/sh") {
		set resp.http.x = std.healthy(sh.backend(resolve=LAZY));
	}
	if (req.url == "/ra") {
		set resp.http.x = ra.backend().resolve() + ":" + ra.backend().resolve();
		ra.remove_backend(s1);
		ra.remove_backend(s2);
		ra.add_backend(s1);
		set resp.http.x = resp.http.x + ":" + ra.backend().resolve() + ":" + ra.backend().resolve();
	}
}
"""
# (admin health changes, url) in turn
SIMPLE_STEPS = [((), "/rr"), ((), "/all"), ((("s1", "sick"), ("s3", "sick")), "/all"), ((("s2", "sick"), ("s3", "healthy")), "/fc"),
                ((("s1", "healthy"), ("s2", "healthy")), "/rm"), ((), "/all"), ((), "/ra"),
                ((("s1", "sick"), ("s2", "sick")), "/sh"), ((("s2", "healthy"),), "/sh")]
SIMPLE_ANSWERS = ["s1:s2:s3:s3:", "s1:s1:s1:s2::s3:s2:true:true", "s2:s2:s2:s2:::s2:false:true", "s3", "s2:s3:s1",
                  "s2:s3:s1:s2::s3:s2:true:true",
                  # two removals and an addition: nxt (2) past the end reads the slot varnishd's array still holds (s3)
                  "s1:s2:s3:s1",
                  # a shard is healthy while one of its members is
                  "false", "true"]


def test_simple_directors_choose_what_varnishd_chose():
    vcl = compile_vcl("vcl 4.1;\n" + SIMPLE_VCL, "simple.vcl")
    assert vcl.init(Context(method="vcl_init", vcl=vcl)).name == "ok"
    answers = []
    for changes, url in SIMPLE_STEPS:
        for name, state in changes:
            set_admin_health(vcl.backends[name], state)
        req = HttpMessage("GET", url)
        ctx = Context(method="vcl_synth", req=req, req_top=req, resp=HttpMessage(status=200), vcl=vcl)
        vcl.subs["vcl_synth"](ctx)
        answers.append(ctx.resp.headers.get("x"))
    assert answers == SIMPLE_ANSWERS


@pytest.mark.skipif(VARNISHTEST is None, reason="varnishtest not installed")
def test_simple_directors_answers_are_varnishds():
    vtc = 'varnishtest "simple directors"\nvarnish v1 -vcl {\n' + SIMPLE_VCL + "} -start\n"
    for changes, url in SIMPLE_STEPS:
        vtc += "".join(f'varnish v1 -cliok "backend.set_health {name} {state}"\n' for name, state in changes)
        vtc += f"client c1 {{\n\ttxreq -url {url}\n\trxresp\n}} -run\n"
    assert re.findall(r"c1 +rxhdr\|x: (.*?)\\r$", run_varnishtest(vtc, "simple"), re.M) == SIMPLE_ANSWERS


# shard_param in a backend task: set() and clear() change the task's copy, which the shard associated
# with it reads, the getters read it, and the client side keeps the vcl_init values (varnishd 7.1.1;
# a set() in vcl_recv fails the task: the second request's 503). `id` removes members by ident and by
# backend. Each header is one line of values joined with ':'.
PARAM_VCL = ("import directors;\nimport blob;\n" + BACKENDS + """sub vcl_init {
	new p = directors.shard_param();
	p.set(by=KEY, key=5, alt=0, healthy=IGNORE);
	new sh = directors.shard();
	sh.add_backend(s1);
	sh.add_backend(s2);
	sh.add_backend(s3);
	sh.add_backend(s4);
	sh.reconfigure();
	sh.associate(p.use());
	new q = directors.shard_param();
	new id = directors.shard();
	id.add_backend(s1, ident="a");
	id.add_backend(s2, ident="b");
	id.add_backend(s3);
	id.add_backend(s4, ident="d");
	id.remove_backend(ident="a");
	id.remove_backend(s4);
	id.reconfigure();
	id.associate();
}
sub vcl_recv {
	if (req.url == "/set") {
		p.set(alt=1);
	}
	if (req.url == "/lookup") {
		set req.backend_hint = directors.lookup("s1");
	}
	if (req.url == "/clear") {
		p.clear();
	}
	return (pass);
}
sub vcl_backend_fetch {
	if (bereq.url == "/bad") {
		p.set(by=KEY, key=-1);
	}
	if (bereq.url == "/bad2") {
		set bereq.backend = sh.backend(resolve=LAZY, alt=1);
		p.set(by=KEY, key=-2);
	}
	set bereq.http.a = sh.backend() + ":" + p.get_alt() + ":" + p.get_key() + ":" + p.get_by() + ":"
		+ p.get_healthy() + ":" + p.get_rampup() + ":" + p.get_warmup();
	p.set(alt=1, warmup=0.5, rampup=false, healthy=ALL);
	set bereq.http.b = sh.backend() + ":" + p.get_alt() + ":" + p.get_key() + ":" + p.get_by() + ":"
		+ p.get_healthy() + ":" + p.get_rampup() + ":" + p.get_warmup();
	p.set(by=BLOB, key_blob=blob.decode(HEX, encoded="deadbeef"), alt=2);
	set bereq.http.c = sh.backend() + ":" + p.get_alt() + ":" + p.get_key() + ":" + p.get_by() + ":"
		+ p.get_healthy() + ":" + p.get_rampup() + ":" + p.get_warmup();
	set bereq.backend = sh.backend(resolve=LAZY, by=HASH);
	set bereq.http.i = bereq.backend.resolve() + ":" + sh.backend(resolve=NOW);
	p.set(by=BLOB, key_blob=blob.decode(HEX, encoded="0102"));
	set bereq.http.j = p.get_key();
	p.set(by=BLOB, key_blob=blob.decode(HEX, encoded="0102030405"));
	set bereq.http.j = bereq.http.j + ":" + p.get_key();
	p.clear();
	set bereq.http.d = sh.backend() + ":" + p.get_alt() + ":" + p.get_key() + ":" + p.get_by() + ":"
		+ p.get_healthy();
	q.set(by=URL);
	set bereq.http.e = q.get_by() + ":" + q.get_key() + ":" + sh.backend(param=q.use()) + ":"
		+ sh.backend(by=KEY, key=3000000000, param=q.use());
	set bereq.backend = sh.backend(resolve=LAZY, alt=3);
	set bereq.http.f = bereq.backend.resolve() + ":" + id.backend(by=KEY, key=1) + id.backend(by=KEY, key=2000000000)
		+ id.backend(by=KEY, key=4000000000);
	return (error(200));
}
sub vcl_backend_error {
	set beresp.http.a = bereq.http.a;
	set beresp.http.b = bereq.http.b;
	set beresp.http.c = bereq.http.c;
	set beresp.http.d = bereq.http.d;
	set beresp.http.e = bereq.http.e;
	set beresp.http.f = bereq.http.f;
	set beresp.http.g = p.get_alt() + ":" + p.get_by();
	set beresp.http.i = bereq.http.i;
	set beresp.http.j = bereq.http.j;
}
sub vcl_deliver {
	set resp.http.h = p.get_alt() + ":" + p.get_key() + ":" + p.get_by() + ":" + p.get_healthy();
}
""")
PARAM_ANSWERS = [("x", {"a": "s1:0:5:KEY:IGNORE:true:-1.000", "b": "s4:1:5:KEY:ALL:false:0.500",
                         "c": "s3:2:3735928559:BLOB:IGNORE:true:-1.000", "d": "s3:0:5:KEY:IGNORE",
                         "e": "URL:234549860:s3:s2", "f": "s2:s2s3s3", "g": "0:KEY", "h": "0:5:KEY:IGNORE",
                         "i": "s2:s2", "j": "258:16909060"}),
                 ("set", 503), ("bad", 503), ("lookup", 503), ("clear", 503), ("bad2", 503)]
PARAM_ERRORS = ["vmod_directors: shard p: shard_param.set() may only be used in vcl_init and in backend/pipe context",
                "vmod_directors: shard p: shard_param.set() invalid key argument -1 with by=KEY",
                # the task's copy of p that sh.backend(resolve=LAZY, ...) made first has p's name too
                "vmod_directors: shard p: shard_param.set() invalid key argument -2 with by=KEY",
                "lookup() may only be called from vcl_init / vcl_fini",
                "vmod_directors: shard p: shard_param.clear() may only be used in vcl_init and in backend/pipe context"]

make = pytest.fixture(inproc_cache_factory)


def test_shard_param_in_backend_tasks(make):
    cache, _ = make("vcl 4.1;\n" + PARAM_VCL)
    answers = []
    for url in ("/x", "/set", "/bad", "/lookup", "/clear", "/bad2"):
        with cache.proc.connect() as sock:    # the Host varnishtest sends: by=HASH reads the request's hash
            sock.sendall(f"GET {url} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode())
            head, _ = read_message(sock)
        lines = head.decode().split("\r\n")
        fields = dict(line.split(": ", 1) for line in lines[1:] if ": " in line)
        answers.append((url[1:], {k: fields.get(k) for k in PARAM_ANSWERS[0][1]} if url == "/x" else int(lines[0][9:12])))
    assert answers == PARAM_ANSWERS
    def errors() -> list[str]:
        return [text for _, tag, text in list(cache.proc.log.records) if tag == "VCL_Error"]

    wait_for(lambda: len(errors()) >= len(PARAM_ERRORS), what="the tasks' VCL_Error records")    # written as tasks end
    assert sorted(errors()) == sorted(PARAM_ERRORS)      # one per task, in the order tasks end


@pytest.mark.skipif(VARNISHTEST is None, reason="varnishtest not installed")
def test_shard_param_answers_are_varnishds():
    vtc = ('varnishtest "shard params"\nvarnish v1 -vcl {\n' + PARAM_VCL + "} -start\n"
           "client c1 {\n\ttxreq -url /x\n\trxresp\n} -run\n"     # a failed task closes the connection: one each
           + "".join(f"client c{i} {{\n\ttxreq -url /{url}\n\trxresp\n\texpect resp.status == {status}\n}} -run\n"
                     for i, (url, status) in enumerate(PARAM_ANSWERS[1:], start=2))
           + "varnish v1 -vsl_catchup\n")
    out = run_varnishtest(vtc, "params")
    assert dict(re.findall(r"c1 +rxhdr\|([a-j]): (.*?)\\r$", out, re.M)) == PARAM_ANSWERS[0][1]
    # varnishd's log interleaves transactions as its workers flush them: the same records, any order
    assert sorted(re.findall(r"vsl\| +\d+ VCL_Error +[bc] (.*)$", out, re.M)) == sorted(PARAM_ERRORS)
    assert re.search(r"^#    top  TEST .* passed", out, re.M)


# vcl_init failures (vcl.load answers 'Failed initialization' with the message), varnishd 7.1.1's words
INIT_FAILURES = [
    ('sh.associate(blob.decode(encoded="x"));', "vmod_directors: shard sh: shard .associate param invalid"),
    ("sh.remove_backend();", "vmod_directors: shard sh: .remove_backend(): either backend or ident are required"),
    ('sh.add_backend(directors.lookup("nosuch"));', "vmod_directors: shard sh: None backend cannot be added"),
    ('new rr = directors.round_robin();\n\trr.add_backend(directors.lookup("nosuch"));',
     "rr: None backend cannot be added"),
    ('new fb = directors.fallback();\n\tfb.remove_backend(directors.lookup("nosuch"));',
     "fb: None backend cannot be removed"),
    ('new p = directors.shard_param();\n\tnew rr = directors.round_robin();\n\trr.add_backend(directors.lookup("p"));',
     "rr: None backend cannot be added"),
    ("new rr = directors.round_robin();\n\trr.add_backend(sh.backend(resolve=NOW));",
     "vmod_directors: shard sh: .backend(resolve=NOW) can not be used in vcl_init{}/vcl_fini{}"),
    # "" names nothing, not even an object called XXXX
    ('new XXXX = directors.round_robin();\n\tnew rr = directors.round_robin();\n\trr.add_backend(directors.lookup(""));',
     "rr: None backend cannot be added"),
    # names are compared exactly: "XXXX" finds XXXX, "xxxx" nothing
    ('new XXXX = directors.round_robin();\n\tXXXX.add_backend(s1);\n\tnew rr = directors.round_robin();\n'
     '\trr.add_backend(directors.lookup("XXXX"));\n\tnew ll = directors.round_robin();\n'
     '\tll.add_backend(directors.lookup("xxxx"));', "ll: None backend cannot be added"),
]


def init_failure_vcl(stmt: str) -> str:
    return ('import directors;\nimport blob;\nbackend s1 { .host = "127.0.0.1"; .port = "9"; }\n'
            f"sub vcl_init {{\n\tnew sh = directors.shard();\n\tsh.add_backend(s1);\n\t{stmt}\n}}\n")


@pytest.mark.parametrize("stmt, message", INIT_FAILURES)
def test_init_failures(stmt, message):
    vcl = compile_vcl("vcl 4.1;\n" + init_failure_vcl(stmt), "fail.vcl")
    init = Context(method="vcl_init", vcl=vcl)
    init.log = []
    assert vcl.init(init).name == "fail"
    assert init.log == [("VCL_Error", message)]


@pytest.mark.skipif(VARNISHTEST is None, reason="varnishtest not installed")
def test_init_failures_are_varnishds():
    vtc = 'varnishtest "init failures"\nvarnish v1 -vcl {backend default none;} -start\n'
    out = run_varnishtest(vtc + "".join(f"varnish v1 -errvcl {{{message}}} {{\n{init_failure_vcl(stmt)}}}\n"
                                        for stmt, message in INIT_FAILURES), "initfail")
    assert re.findall(r"CLI RX\|\\t(.*)$", out, re.M) == [message for _, message in INIT_FAILURES]


# sh.debug(5): the lookup and the rampup/warmup lines, written at once under vxid 0 as varnishd 7.1.1
# writes them (VSL(SLT_Debug, 0, ...)); the seconds since each backend changed vary
DEBUG_VCL = """import directors;
backend s1 { .host = "127.0.0.1"; .port = "9"; }
backend s2 { .host = "127.0.0.1"; .port = "9"; }
sub vcl_init {
	new sh = directors.shard();
	sh.add_backend(s1);
	sh.add_backend(s2);
	sh.reconfigure(replicas=2);
	sh.debug(5);
}
sub vcl_recv { return (synth(200)); }
sub vcl_synth {
	set resp.http.a = sh.backend(by=KEY, key=7);
}
"""
DEBUG_LINES = ["vmod_directors: shard: lookup key 7 idx 0 host 1",
               "vmod_directors: shard: chosen host 1 rampup 0.000000 changed S",
               "vmod_directors: shard: alt host 0 rampup 0.000000 changed S"]


def _seconds_masked(lines: list[str]) -> list[str]:
    return [re.sub(r"changed \d+\.\d{6}$", "changed S", line) for line in lines]


def test_shard_debug_lines(make):
    cache, _ = make("vcl 4.1;\n" + DEBUG_VCL)
    kinds = []
    write = cache.proc.log.write
    cache.proc.log.write = lambda vxid, kind, records, tail=b"": (kinds.append((vxid, kind)), write(vxid, kind, records, tail))
    status, headers, _ = cache.get("/")
    assert (status, headers.get("a")) == (200, "s2")
    lines = [text for vxid, tag, text in list(cache.proc.log.records) if tag == "Debug" and "shard" in text]
    assert _seconds_masked(lines) == DEBUG_LINES
    assert kinds.count((0, "-")) == len(DEBUG_LINES)


@pytest.mark.skipif(VARNISHTEST is None, reason="varnishtest not installed")
def test_shard_debug_lines_are_varnishds():
    vtc = ('varnishtest "shard debug"\nvarnish v1 -vcl {\n' + DEBUG_VCL + "} -start\n"
           "client c1 {\n\ttxreq\n\trxresp\n} -run\n")
    lines = re.findall(r"vsl\| +0 Debug +- (vmod_directors: shard.*)$", run_varnishtest(vtc, "debug"), re.M)
    assert _seconds_masked(lines) == DEBUG_LINES


def test_shard_report_rampup():
    """backend.list -p's shard rows (vmod_shard_list): a healthy backend that changed 0.25 s ago with a 7 s
    rampup is at 3.57% with 6.750 s left, as varnishd 7.1.1 listed it; one with its own rampup of 0 s is
    done; a sick one is at 0. Members in ring order after a removal: the last fills the hole."""
    vcl = compile_vcl("vcl 4.1;\nimport directors;\n" + BACKENDS + """sub vcl_init {
	new sh = directors.shard();
	sh.set_rampup(7s);
	sh.add_backend(s1, ident="a");
	sh.add_backend(s2, ident="b", rampup=0s);
	sh.add_backend(s3);
	sh.add_backend(s4, rampup=2s);
	sh.remove_backend(ident="a");
	sh.reconfigure();
	new half = directors.shard();
	half.set_rampup(0.5s);
	half.add_backend(s1);
	half.reconfigure();
}
""", "report.vcl")
    assert vcl.init(Context(method="vcl_init", vcl=vcl)).name == "ok"
    for name in ("s2", "s3", "s4"):
        set_admin_health(vcl.backends[name], "healthy")
        vcl.backends[name].live.changed = 1000.0
    set_admin_health(vcl.backends["s2"], "sick")
    vcl.backends["s2"].live.changed = 1000.0
    rows = vcl.instances["sh"].report(1000.25)
    assert [(name, ident, ok, f"{100 * done:6.2f}%", f"{left:8.3f}s") for name, ident, ok, done, left in rows] == [
        ("s4", "s4", True, " 12.50%", "   1.750s"), ("s2", "b", False, "  0.00%", "   0.000s"),
        ("s3", "s3", True, "  3.57%", "   6.750s")]
    assert vcl.instances["sh"].report(1010.0)[2][3:] == (1.0, 0.0)
    set_admin_health(vcl.backends["s1"], "healthy")
    vcl.backends["s1"].live.changed = 1000.0
    assert vcl.instances["half"].report(1000.25) == [("s1", "s1", True, 0.5, 0.25)]


def test_shard_rampup_share_follows_the_time_since_the_backend_became_healthy():
    """vmod_directors(3), shard rampup: a backend healthy for less than the rampup duration gets a share
    growing linearly from 0 (the rest goes to the next backend); with rampup=false, all of it. The time
    is the task's own (ctx.now), not the clock."""
    from cacheserver.backends import live
    from vcl.runtime import BackendSpec
    from vmods.directors import Shard, _shard_add, _shard_set_rampup

    b = [BackendSpec(f"b{i}", host="127.0.0.1", port=str(9000 + i)) for i in range(2)]
    sh = Shard()
    init = Context(method="vcl_init")
    _shard_set_rampup(sh, init, 10.0)
    for x in b:
        _shard_add(sh, init, x)
    sh.reconfigure(init, 67)
    req = HttpMessage("GET", "/")
    ctx = Context(method="vcl_recv", req=req, req_top=req)
    key = next(k for k in range(0, 2**32, 2**24) if sh.pick(ctx, k, 0, -1, False, "CHOSEN") is b[0])
    live(b[0]).changed, live(b[1]).changed = 1000.0, 0.0
    ctx.now = 1000.0                                        # b0 has just become healthy: no share yet
    assert {sh.pick(ctx, key, 0, -1, True, "CHOSEN").name for _ in range(20)} == {"b1"}
    assert sh.pick(ctx, key, 0, -1, False, "CHOSEN") is b[0]             # rampup=false
    ctx.now = 1010.0                                        # ramped up: all of it
    assert {sh.pick(ctx, key, 0, -1, True, "CHOSEN").name for _ in range(20)} == {"b0"}
    live(b[1]).changed = 1005.0                             # the next one ramping up too: b0 keeps it
    ctx.now = 1001.0                                        # (whatever the dice: b0 has earned only 10%)
    assert {sh.pick(ctx, key, 0, -1, True, "CHOSEN").name for _ in range(20)} == {"b0"}


def test_registration_helpers_build_what_they_are_given():
    """_obj, _method and _opt run at import for the real objects (so a mutation run sees them only
    here): a constructor may only be called in vcl_init (VCC's `new`), an optional argument left out
    is UNSET."""
    from vmods import directors as d

    def impl(*args):
        return None

    try:
        obj = d._obj("t_obj", impl, [d._opt("a", "INT", 3)])
        assert d.VMOD.objects["t_obj"] is obj
        c = obj.constructor
        assert (obj.name, c.name, c.impl, c.ret, c.restrict) == ("t_obj", "t_obj", impl, "VOID", frozenset({"vcl_init"}))
        assert [(p.name, p.type, p.default, p.optional, p.enum) for p in c.params] == [("a", "INT", 3, True, ())]
        assert d._obj("t_obj2", impl).constructor.params == []
        d._method(obj, "m", impl, "BACKEND", [d._opt("e", "ENUM", enum=("X",))])
        d._method(obj, "v", impl)
        m, v = obj.methods["m"], obj.methods["v"]
        assert (m.name, m.impl, m.ret, m.restrict) == ("m", impl, "BACKEND", None)
        assert [(p.name, p.default, p.optional, p.enum) for p in m.params] == [("e", d.UNSET, True, ("X",))]
        assert (v.name, v.ret, v.params) == ("v", "VOID", [])
    finally:
        d.VMOD.objects.pop("t_obj", None)
        d.VMOD.objects.pop("t_obj2", None)


def test_the_builtin_shard_parameters_are_varnishds():
    """shard_param_default (vmod_directors_shard.c): named "builtin defaults", of the VMOD scope, every
    field set (by=HASH, healthy=CHOSEN, rampup, alt=0, warmup=-1), nothing below it."""
    from vmods import directors as d

    p = d._builtin_defaults()
    assert (str(p), p.scope, p.defaults, p.mask) == ("builtin defaults", "VMOD", None, set(d._PARAM_FIELDS))
    assert (p.by or "HASH", p.healthy or "CHOSEN", p.rampup, p.alt, p.warmup) == ("HASH", "CHOSEN", True, 0, -1.0)



# What the mutation run's survivors showed untested (issue 15), one VCL, step by step as in SIMPLE_STEPS:
# add_backend's weight (1 is taken silently, under 1 is ignored with a Notice, 1.5 makes 100 replicas),
# duplicates (by name, by ident, a later one still added), which holes later additions fill, changes
# in a client task (seen when it ends; BOOL results), reconfigure()'s results and Errors, the debug
# flags one by one, the alt walk when the ring runs out of healthy backends, rampup (rampup=false,
# a LAZY resolve, members that are directors), a parameter blob's fields, sh.key of "", of an unset
# header and of a raw byte; the failures: an invalid param blob, LAZY arguments checked in a fetch.
SURV_VCL = ("import directors;\nimport blob;\n" + BACKENDS
            + "".join(f'backend s{i} {{ .host = "127.0.0.1"; .port = "9"; }}\n' for i in (5, 6)) + """sub vcl_init {
	new sh = directors.shard();
	sh.add_backend(s1);
	sh.add_backend(s2);
	sh.add_backend(s3);
	sh.add_backend(s4);
	sh.reconfigure();
	new ex = directors.shard();
	ex.add_backend(s1);
	ex.add_backend(s2);
	ex.add_backend(s3);
	ex.add_backend(s4);
	ex.reconfigure();
	new w = directors.shard();
	w.debug(2);
	w.add_backend(s1, weight=1);
	w.add_backend(s2, weight=1.5);
	w.add_backend(s3, weight=0.5);
	w.reconfigure(replicas=2);
	new d = directors.shard();
	d.add_backend(s1);
	d.add_backend(s2);
	d.add_backend(s2);
	d.add_backend(s1, ident="a");
	d.add_backend(s3, ident="a");
	d.add_backend(s4);
	d.add_backend(s6);
	d.add_backend(s5, ident="s6");
	d.reconfigure();
	new ho = directors.shard();
	ho.add_backend(s1);
	ho.add_backend(s2);
	ho.add_backend(s3);
	ho.add_backend(s4);
	ho.reconfigure();
	ho.remove_backend(s1);
	ho.remove_backend(s2);
	ho.add_backend(s5);
	ho.add_backend(s6);
	ho.reconfigure();
	ho.debug(1);
	new h3 = directors.shard();
	h3.add_backend(s1);
	h3.add_backend(s2);
	h3.add_backend(s3);
	h3.add_backend(s4);
	h3.add_backend(s5);
	h3.reconfigure();
	h3.remove_backend(s1);
	h3.remove_backend(s2);
	h3.remove_backend(s3);
	h3.reconfigure();
	new rp = directors.shard();
	rp.debug(2);
	rp.add_backend(s1);
	rp.add_backend(s2);
	rp.remove_backend(s2);
	rp.reconfigure(replicas=3);
	new q = directors.shard_param();
	q.set(alt=1);
	new pr = directors.shard_param();
	pr.set(rampup=true);
	new r1 = directors.shard();
	r1.add_backend(s1);
	r1.add_backend(s2);
	r1.reconfigure(replicas=1);
	new d0 = directors.shard();
	d0.add_backend(s1);
	d0.add_backend(s2);
	d0.reconfigure(replicas=2);
	new d1 = directors.shard();
	d1.add_backend(s1);
	d1.add_backend(s2);
	d1.debug(1);
	d1.reconfigure(replicas=2);
	new d4 = directors.shard();
	d4.add_backend(s1);
	d4.add_backend(s2);
	d4.debug(4);
	d4.reconfigure(replicas=2);
	new ru = directors.shard();
	ru.set_rampup(1d);
	ru.add_backend(s1);
	ru.add_backend(s2, rampup=0s);
	ru.reconfigure();
	new rra = directors.round_robin();
	rra.add_backend(s1);
	new rrb = directors.round_robin();
	rrb.add_backend(s2);
	new rd = directors.shard();
	rd.set_rampup(1d);
	rd.add_backend(rra.backend());
	rd.add_backend(rrb.backend(), rampup=0s);
	rd.reconfigure();
	new rn = directors.shard();
	rn.add_backend(s5);
	rn.add_backend(s6);
	rn.reconfigure();
	# two idents whose hashes collide (i87432 0, i97108 0): one point, two hosts
	new co = directors.shard();
	co.add_backend(s1, ident="i87432");
	co.add_backend(s2, ident="i97108");
	co.reconfigure(replicas=5);
	new cr = directors.shard();
	cr.add_backend(s2, ident="i97108");
	cr.add_backend(s1, ident="i87432");
	cr.reconfigure(replicas=5);
}
sub vcl_recv {
	if (req.url ~ "^/be") {
		return (pass);
	}
	return (synth(200));
}
sub vcl_synth {
	if (req.url == "/cfg") {
		set resp.http.d = d.backend(by=KEY, key=0) + d.backend(by=KEY, key=1000000000)
			+ d.backend(by=KEY, key=2000000000) + d.backend(by=KEY, key=3000000000) + d.backend(by=KEY, key=4000000000);
		set resp.http.ho = ho.backend(by=KEY, key=0) + ho.backend(by=KEY, key=2000000000);
		set resp.http.h3 = h3.backend(by=KEY, key=0) + h3.backend(by=KEY, key=1000000000)
			+ h3.backend(by=KEY, key=2000000000) + h3.backend(by=KEY, key=3000000000);
		set resp.http.pq = sh.backend(by=KEY, key=0, param=q.use()) + ":" + sh.backend(by=KEY, key=0);
		set resp.http.pr = pr.get_rampup();
		set resp.http.r1 = r1.backend(by=KEY, key=0) + r1.backend(by=KEY, key=3000000000);
		set resp.http.k = sh.key("") + ":" + sh.key(req.http.nosuch) + ":" + sh.key(req.http.raw);
		set resp.http.ru = ru.backend(by=KEY, key=0) + ru.backend(by=KEY, key=155189248)
			+ ru.backend(by=KEY, key=0, rampup=false);
		set resp.http.rd = rd.backend(by=KEY, key=46137344) + ":" + rd.backend(by=KEY, key=0) + ":"
			+ rd.backend(by=KEY, key=46137344, rampup=false);
		set resp.http.co = co.backend(by=KEY, key=2724081241) + co.backend(by=KEY, key=2724081240)
			+ cr.backend(by=KEY, key=2724081241);
	}
	if (req.url == "/chg") {
		set resp.http.a = sh.add_backend(s5);
		set resp.http.b = sh.backend(by=KEY, key=71303168);
		set resp.http.c = sh.remove_backend(s1);
		set resp.http.e = sh.backend(by=KEY, key=0);
		set resp.http.f = rn.clear();
	}
	if (req.url == "/after") {
		set resp.http.b = sh.backend(by=KEY, key=71303168);
		set resp.http.e = sh.backend(by=KEY, key=0);
		set resp.http.f = "" + rn.backend();
	}
	if (req.url == "/rc") {
		set resp.http.r0 = r1.reconfigure();
		set resp.http.r1 = r1.reconfigure(replicas=0);
		set resp.http.r2 = r1.reconfigure(replicas=-3);
		set resp.http.r3 = r1.remove_backend(s2);
		set resp.http.r4 = r1.reconfigure();
		set resp.http.r5 = r1.clear();
		set resp.http.r6 = r1.reconfigure();
	}
	if (req.url == "/dbg") {
		set resp.http.x = d0.backend(by=KEY, key=7) + d1.backend(by=KEY, key=7) + d4.backend(by=KEY, key=7);
	}
	if (req.url == "/w38") {
		set resp.http.x = ex.backend(by=KEY, key=226492416, alt=2) + ex.backend(by=KEY, key=226492416, alt=3)
			+ ex.backend(by=KEY, key=226492416, alt=1) + ex.backend(by=KEY, key=0, alt=2) + ":"
			+ rd.backend(by=KEY, key=46137344);
	}
	if (req.url == "/ex") {
		set resp.http.x = "" + ex.backend(by=KEY, key=0, alt=1, healthy=ALL) + ":"
			+ ex.backend(by=KEY, key=0, alt=2, healthy=ALL) + ":" + ex.backend(by=KEY, key=226492416, alt=3, healthy=ALL)
			+ ":" + ex.backend(by=KEY, key=0) + ":" + ex.backend(by=KEY, key=0, alt=1) + ":"
			+ ex.backend(by=KEY, key=226492416, alt=1);
	}
	if (req.url == "/pinv") {
		set resp.http.x = ex.backend(param=blob.decode(encoded="x"));
	}
}
sub vcl_backend_fetch {
	if (bereq.url == "/be/lazyinv") {
		set bereq.backend = ex.backend(resolve=LAZY, by=KEY);
	}
	if (bereq.url == "/be/lazy") {
		set bereq.backend = ru.backend(resolve=LAZY, by=KEY, key=0);
		set bereq.http.x = bereq.backend.resolve();
		set bereq.backend = ru.backend(resolve=LAZY, by=KEY, key=0, rampup=false);
		set bereq.http.x = bereq.http.x + ":" + bereq.backend.resolve();
		set bereq.backend = rn.backend(resolve=LAZY, by=KEY, key=0);
		set bereq.http.x = bereq.http.x + ":" + bereq.backend.resolve();
	}
	return (error(200));
}
sub vcl_backend_error {
	set beresp.http.x = bereq.http.x;
}
""")
# (admin health changes, url, the response headers read) in turn; /cfg sends a raw 0xff byte in `raw`
SURV_STEPS = [
    ((), "/cfg", ("d", "ho", "h3", "pq", "pr", "r1", "k", "ru", "rd", "co")), ((), "/chg", ("a", "b", "c", "e", "f")),
    ((), "/after", ("b", "e", "f")), ((), "/rc", tuple(f"r{i}" for i in range(7))), ((), "/dbg", ("x",)),
    ((), "/be/lazy", ("x",)), ((), "/pinv", ()), ((), "/be/lazyinv", ()),
    ((("s2", "sick"),), "/w38", ("x",)), ((("s1", "sick"),), "/w38", ("x",)),
    ((("s1", "auto"), ("s3", "sick"), ("s4", "sick")), "/ex", ("x",)), ((("s1", "sick"),), "/ex", ("x",))]


def surv_vtc() -> str:
    vtc = 'varnishtest "directors survivors"\nvarnish v1 -vcl {\n' + SURV_VCL + "} -start\n"
    for i, (changes, url, _) in enumerate(SURV_STEPS):
        vtc += "".join(f'varnish v1 -cliok "backend.set_health {name} {state}"\n' for name, state in changes)
        raw = ' -hdr "raw: \\xff"' if url == "/cfg" else ""
        vtc += f"client c{i} {{\n\ttxreq -url {url}{raw}\n\trxresp\n}} -run\n"
    return vtc + "varnish v1 -vsl_catchup\n"


def _masked(text: str) -> str:
    """A rampup/warmup Debug line's seconds since the backend changed vary: masked when they are few
    (the backends here were made a moment ago, never 'now + changed')."""
    return re.sub(r"changed (\d+\.\d{6})$", lambda m: "changed S" if float(m.group(1)) < 600 else m.group(0), text)


def ours_survivors() -> tuple[list, list[str], list[tuple[str, str]]]:
    """Each step's status or headers, the vxid 0 lines (vcl_init's Notices and Debug, then the
    shard's Debug lines as requests make them) and the tasks' Error and VCL_Error records."""
    vcl = compile_vcl("vcl 4.1;\n" + SURV_VCL, "surv.vcl")
    init = Context(method="vcl_init", vcl=vcl)
    init.log = []
    assert vcl.init(init).name == "ok"
    vxid0 = [_masked(text) for tag, text in init.log]
    errors, answers = [], []
    for changes, url, names in SURV_STEPS:
        for name, state in changes:
            set_admin_health(vcl.backends[name], state)
        if url.startswith("/be"):
            ctx = Context(method="vcl_backend_fetch", bereq=HttpMessage("GET", url), vcl=vcl)
            msg, sub, status = ctx.bereq, "vcl_backend_fetch", 503
        else:
            req = HttpMessage("GET", url)
            req.headers.set("raw", b"\xff".decode("utf-8", "surrogateescape"))    # as the server reads it
            ctx = Context(method="vcl_synth", req=req, req_top=req, resp=HttpMessage(status=200), vcl=vcl)
            msg, sub, status = ctx.resp, "vcl_synth", 500
        ctx.log = []
        try:
            vcl.subs[sub](ctx)
            answers.append({name: msg.headers.get(name) for name in names})
        except VCLFailure as exc:
            ctx.log.append(("VCL_Error", str(exc)))
            answers.append(status)
        end_task(ctx)
        vxid0 += [_masked(text) for tag, text in ctx.log if tag == "Debug"]
        errors += [(tag, text) for tag, text in ctx.log if tag in ("Error", "VCL_Error")]
    return answers, vxid0, sorted(errors)


def varnishds_survivors(out: str) -> tuple[list, list[str], list[tuple[str, str]]]:
    answers = []
    for i, (_, _, names) in enumerate(SURV_STEPS):
        status = int(re.search(rf"^\*+ +c{i} +rxhdr\|HTTP/1.1 (\d+) ", out, re.M).group(1))
        headers = dict(re.findall(rf"^\*+ +c{i} +rxhdr\|([a-z0-9]+): (.*?)\\r$", out, re.M))
        answers.append({name: headers.get(name) for name in names} if status == 200 else status)
    vxid0 = [_masked(text) for text in re.findall(r"vsl\| +0 (?:Notice|Debug|Error) +- (vmod_directors: .*)$", out, re.M)]
    errors = re.findall(r"vsl\| +[1-9]\d* (Error|VCL_Error) +[bc] (.*)$", out, re.M)
    return answers, vxid0, sorted(errors)


# varnishd 7.1.1's answers: each step's headers (or status: a failed task), the vxid 0 lines in order
# (vcl_init's, then the shard's Debug lines as the requests made them) and the tasks' Error records
SURV_ANSWERS = [
    {"d": "s1s1s1s1s6", "ho": "s4s5", "h3": "s4s5s5s5", "pq": "s4:s1", "pr": "true", "r1": "s1s1",
     "k": "1438143096:1438143096:2313892472", "ru": "s2s2s1", "rd": "rrb:rrb:rra", "co": "s1s1s2"},
    {"a": "true", "b": "s3", "c": "true", "e": "s1", "f": "true"},
    {"b": "s5", "e": "s4", "f": ""},
    {"r0": "true", "r1": "false", "r2": "false", "r3": "true", "r4": "true", "r5": "true", "r6": "false"},
    {"x": "s2s2s2"},
    {"x": "s2:s1:"},
    500,
    503,
    {"x": "s3s4s1s3:rra"},
    {"x": "s3s4s3s3:"},
    {"x": ":s1:s1:s1::s1"},
    {"x": ":::::"},
]
SURV_VXID0 = [
    "vmod_directors: shard w: .add_backend(weight=0.500000) ignored",
    "vmod_directors: shard: hashcircle[    0] = {point = 1112f910, host =  1}",
    "vmod_directors: shard: hashcircle[    1] = {point = 523723f2, host =  2}",
    "vmod_directors: shard: hashcircle[    2] = {point = 6bfd5a2d, host =  0}",
    "vmod_directors: shard: hashcircle[    3] = {point = 6e040182, host =  1}",
    "vmod_directors: shard: hashcircle[    4] = {point = ae8946c6, host =  2}",
    "vmod_directors: shard: hashcircle[    5] = {point = b197e339, host =  1}",
    "vmod_directors: shard: hashcircle[    6] = {point = f08ad325, host =  0}",
    "vmod_directors: shard d: backend s2 already exists - skipping",
    "vmod_directors: shard d: backend s1/a already exists - skipping",
    "vmod_directors: shard d: backend s6 already exists - skipping",
    "vmod_directors: shard: hashcircle[    0] = {point = 6257bc27, host =  0}",
    "vmod_directors: shard: hashcircle[    1] = {point = 6bfd5a2d, host =  0}",
    "vmod_directors: shard: hashcircle[    2] = {point = f08ad325, host =  0}",
    "vmod_directors: shard: lookup key 0 idx 0 host 3",
    "vmod_directors: shard: lookup key 77359400 idx 122 host 0",
    "vmod_directors: shard: lookup key 7 idx 0 host 1",
    "vmod_directors: shard: chosen host 1 rampup 0.000000 changed S",
    "vmod_directors: shard: alt host 0 rampup 0.000000 changed S",
]
SURV_ERRORS = [
    ("Error", "vmod_directors: shard r1: .reconfigure() invalid replicas argument -3"),
    ("Error", "vmod_directors: shard r1: .reconfigure() invalid replicas argument 0"),
    ("Error", "vmod_directors: shard r1: .reconfigure() no backends"),
    ("Error", "vmod_directors: shard rn: .reconfigure() no backends"),
    ("Error", "vmod_directors: shard rn: no backends"),
    ("Error", "vmod_directors: shard rn: no backends"),
    ("VCL_Error", "vmod_directors: shard ex: .backend(key_blob) param invalid"),
    ("VCL_Error", "vmod_directors: shard ex: shard.backend() missing key argument with by=KEY"),
]


def test_survivor_steps_are_what_varnishd_did():
    assert ours_survivors() == (SURV_ANSWERS, SURV_VXID0, SURV_ERRORS)


@pytest.mark.skipif(VARNISHTEST is None, reason="varnishtest not installed")
def test_survivor_steps_are_varnishds():
    assert varnishds_survivors(run_varnishtest(surv_vtc(), "surv")) == (SURV_ANSWERS, SURV_VXID0, SURV_ERRORS)


def test_vcl_pipe_by_hash_reads_the_requests_digest():
    """varnishd's shard_get_key reads the busyobj's digest whenever there is one, vcl_pipe's too: for
    /p1 with Host 127.0.0.1, 244956601 (varnishd 7.1.1; tests/vtc/fid_shard_pipe_hash.vtc), where the
    URL's hash is 2959796191."""
    import hashlib

    vcl = compile_vcl("vcl 4.1;\nimport directors;\nbackend s1 none;\nsub vcl_init { new p = directors.shard_param(); }\n"
                      "sub vcl_pipe {\n\tset bereq.http.k = p.get_key();\n}\n", "pipe.vcl")
    assert vcl.init(Context(method="vcl_init", vcl=vcl)).name == "ok"
    req = HttpMessage("GET", "/p1")
    ctx = Context(method="vcl_pipe", req=req, req_top=req, bereq=HttpMessage("GET", "/p1"), vcl=vcl,
                  hash=hashlib.sha256(b"/p1\x00127.0.0.1\x00").digest())
    vcl.subs["vcl_pipe"](ctx)
    assert ctx.bereq.headers.get("k") == "244956601"


def _two(rampup: float = 10.0):
    """A shard of b0 and b1 and a key whose chosen backend is b0 (b1 the next one)."""
    from vcl.runtime import BackendSpec
    from vmods.directors import Shard, _shard_add, _shard_set_rampup

    b = [BackendSpec(f"b{i}", host="127.0.0.1", port=str(9000 + i)) for i in range(2)]
    sh = Shard()
    init = Context(method="vcl_init")
    _shard_set_rampup(sh, init, rampup)
    for x in b:
        _shard_add(sh, init, x)
    sh.reconfigure(init, 67)
    req = HttpMessage("GET", "/")
    ctx = Context(method="vcl_recv", req=req, req_top=req)
    key = next(k for k in range(0, 2**32, 2**24) if sh.pick(ctx, k, 0, 0.0, False, "CHOSEN") is b[0])
    return sh, b, ctx, key


def test_rampup_and_warmup_at_their_bounds():
    """sharddir_pick_be_locked's comparisons (vmod_directors_shard_dir.c, 7.1): a backend is ramping up
    while now - changed < its rampup, strictly; ramping, it keeps the request if the next one ramps too
    (now - changed < that one's rampup) or if dice * rampup < now - changed; not ramping, it keeps it if
    warmup == 0 or dice > warmup. The dice are TESTABLE's next draw, made equal to the bound here."""
    from cacheserver.backends import live
    from vmods.vrnd import TESTABLE

    sh, b, ctx, key = _two()
    ctx.now = 1010.0
    live(b[0]).changed, live(b[1]).changed = 1000.0, 0.0
    # exactly its rampup ago: not ramping up any more, so warmup (1.0: always the next one) decides
    assert sh.pick(ctx, key, 0, 1.0, True, "CHOSEN") is b[1]
    # ramping (changed now); the next one changed exactly its rampup ago: not ramping, the dice
    # (x 10 < 0: never) give the request to it
    live(b[0]).changed, live(b[1]).changed = 1010.0, 1000.0
    assert sh.pick(ctx, key, 0, -1, True, "CHOSEN") is b[1]
    TESTABLE.seed(7)
    dice = TESTABLE.double()
    # the dice exactly at the share the chosen one has earned: not below it, the next one gets it
    TESTABLE.seed(7)
    ctx.now = dice * 10.0
    live(b[0]).changed, live(b[1]).changed = 0.0, -100.0
    assert sh.pick(ctx, key, 0, -1, True, "CHOSEN") is b[1]
    # not ramping, the dice exactly at warmup: not above it, the next one gets it
    TESTABLE.seed(7)
    ctx.now = 1000.0
    assert sh.pick(ctx, key, 0, dice, True, "CHOSEN") is b[1]


def test_report_of_a_backend_without_rampup_changed_just_now():
    """backend.list -p: a healthy backend whose rampup is 0 is done (100%, 0 s left) even in the second
    it changed."""
    from cacheserver.backends import live

    sh, b, _, _ = _two(rampup=0.0)
    live(b[0]).changed = live(b[1]).changed = 1000.0
    assert [row[2:] for row in sh.report(1000.0)] == [(True, 1.0, 0.0)] * 2


@pytest.mark.parametrize("n", [65537, 131072])
def test_a_backends_points_are_capped_at_the_rings_share(n):
    """shardcfg_hashcircle (vmod_directors_shard_cfg.c, 7.1): no backend gets more than
    (UINT32_MAX - 1) / n_backend points, whatever its replicas x weight. n is picked where that
    division's rounding shows: 4294967294 // 65537 = 65534, 4294967294 // 131072 = 32767."""
    import math

    from vcl.runtime import BackendSpec
    from vmods.directors import Shard, _ShardBackend

    sh = Shard()
    sh.backends = [_ShardBackend(BackendSpec(f"b{i}"), None, math.nan, replicas=1) for i in range(n - 1)]
    sh.backends.append(_ShardBackend(BackendSpec("big"), None, math.nan, replicas=10**6))
    sh._build_circle()
    assert len(sh.circle) == n - 1 + {65537: 65534, 131072: 32767}[n]
    assert sum(host == n - 1 for _, host in sh.circle) == {65537: 65534, 131072: 32767}[n]
