"""VCL costs: loading a 2,000-line VCL, and the per-request cost of a typical VCL against an empty one.

Calls the compiled subroutines on a Context directly (no server), so the figures are the VCL's own.
Run: python bench/vcl_bench.py [--requests N]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from vcl.compiler import compile_vcl  # noqa: E402
from vcl.runtime import IP, Context, Headers, HttpMessage  # noqa: E402

EMPTY_VCL = "vcl 4.1;\nbackend default none;\n"

# A typical front-end policy: a dozen header rules, a regex, an ACL, a user subroutine.
TYPICAL_VCL = """vcl 4.1;
import std;
backend default { .host = "127.0.0.1"; .port = "8080"; }

acl internal {
	"127.0.0.1";
	"10.0.0.0"/8;
	"192.168.0.0"/16;
	! "10.9.9.9";
}

sub strip_tracking {
	if (req.url ~ "[?&](utm_[a-z]+|gclid|fbclid)=") {
		set req.url = regsuball(req.url, "(utm_[a-z]+|gclid|fbclid)=[^&]*&?", "");
	}
}

sub vcl_recv {
	call strip_tracking;
	if (req.http.X-Forwarded-For) {
		set req.http.X-Forwarded-For = req.http.X-Forwarded-For + ", " + client.ip;
	} else {
		set req.http.X-Forwarded-For = client.ip;
	}
	set req.http.X-Request-Start = "t=" + now;
	unset req.http.Proxy;
	unset req.http.X-Debug;
	if (req.http.Accept-Encoding !~ "gzip") {
		unset req.http.Accept-Encoding;
	}
	if (client.ip ~ internal) {
		set req.http.X-Internal = "1";
	}
	if (req.url ~ "\\.(css|js|png|jpg|gif|ico|svg|woff2?)(\\?.*)?$") {
		unset req.http.Cookie;
	}
	set req.http.X-Device = "desktop";
	if (req.http.User-Agent ~ "(?i)mobile|android|iphone") {
		set req.http.X-Device = "mobile";
	}
}

sub vcl_deliver {
	set resp.http.X-Cache = "MISS";
	if (obj.hits > 0) {
		set resp.http.X-Cache = "HIT";
	}
	set resp.http.X-Hits = obj.hits;
	unset resp.http.Via;
	unset resp.http.X-Powered-By;
	unset resp.http.Server;
}
"""


def big_vcl(lines: int = 2000) -> str:
    """A VCL of about `lines` lines: many subroutines with header rules, regexes and an ACL."""
    out = ["vcl 4.1;", "import std;", 'backend default { .host = "127.0.0.1"; }',
           "acl big {"] + [f'\t"10.{i // 256}.{i % 256}.0"/24;' for i in range(100)] + ["}"]
    subs = []
    i = 0
    while len(out) < lines - 20:
        name = f"rule_{i}"
        subs.append(name)
        out += [
            f"sub {name} {{",
            f'\tif (req.url ~ "^/section{i}/(.*)$" && client.ip ~ big) {{',
            f'\t\tset req.http.X-Section-{i} = regsub(req.url, "^/section{i}/(.*)$", "\\1");',
            f"\t\tset req.http.X-Count-{i} = std.integer(req.http.X-In-{i}, 0) + {i};",
            "\t} else {",
            f'\t\tunset req.http.X-Section-{i};',
            "\t}",
            "}",
        ]
        i += 1
    out.append("sub vcl_recv {")
    out += [f"\tcall {name};" for name in subs]
    out.append("}")
    return "\n".join(out) + "\n"


def make_ctx(vcl) -> Context:
    headers = Headers([["Host", "www.example.com"], ["User-Agent", "Mozilla/5.0 (X11; Linux x86_64)"],
                       ["Accept", "text/html"], ["Accept-Encoding", "gzip, deflate"],
                       ["Accept-Language", "en"], ["Cookie", "session=abc"]])
    req = HttpMessage("GET", "/articles/2024/some-page?id=5&utm_source=x", "HTTP/1.1", headers=headers)
    ctx = Context(method="vcl_recv", req=req, req_top=req, client_ip=IP("10.1.2.3", 5000),
                  server_ip=IP("127.0.0.1", 80), xid=1, hash_parts=[], req_time=time.time(), vcl=vcl,
                  backend_hint=vcl.default_backend)
    ctx.resp = HttpMessage(status=200, reason="OK", headers=Headers([["Via", "x"], ["Server", "y"]]))
    ctx.obj_hits = 1
    return ctx


def per_request(vcl, n: int) -> float:
    """Seconds per request for vcl_recv + vcl_hash + vcl_deliver on a fresh request."""
    recv, hash_, deliver = vcl.subs["vcl_recv"], vcl.subs["vcl_hash"], vcl.subs["vcl_deliver"]
    ctxs = [make_ctx(vcl) for _ in range(n)]   # built outside the timed loop
    # CPU time of this process: the figure stays meaningful on a busy machine.
    start = time.process_time()
    for ctx in ctxs:
        recv(ctx)
        hash_(ctx)
        deliver(ctx)
    return (time.process_time() - start) / n


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--requests", type=int, default=20_000)
    ap.add_argument("--rounds", type=int, default=7)
    args = ap.parse_args()

    source = big_vcl()
    nlines = source.count("\n")
    loads = []
    for _ in range(args.rounds):
        t = time.process_time()
        compile_vcl(source, "big.vcl")
        loads.append(time.process_time() - t)
    print(f"load {nlines}-line VCL (CPU time): median {statistics.median(loads) * 1000:.1f} ms, "
          f"best {min(loads) * 1000:.1f} ms ({args.rounds} loads)")

    empty = compile_vcl(EMPTY_VCL, "empty.vcl")
    typical = compile_vcl(TYPICAL_VCL, "typical.vcl")
    ctx = make_ctx(typical)
    typical.subs["vcl_recv"](ctx)
    assert ctx.req.headers.get("X-Internal") == "1" and "utm_source" not in ctx.req.url
    e = min(per_request(empty, args.requests) for _ in range(args.rounds))
    t = min(per_request(typical, args.requests) for _ in range(args.rounds))
    print(f"per request (vcl_recv + vcl_hash + vcl_deliver, CPU time), best of {args.rounds} x {args.requests}:")
    print(f"  empty VCL (built-in only): {e * 1e6:.2f} us")
    print(f"  typical VCL:               {t * 1e6:.2f} us")
    print(f"  cost of the typical rules: {(t - e) * 1e6:.2f} us per request")


if __name__ == "__main__":
    main()
