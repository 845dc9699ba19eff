"""Bad VCL never gives a Python traceback: mutated programs compile or raise VCLError, nothing else."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from vcl.compiler import compile_vcl
from vcl.errors import VCLError

SEED_VCL = """vcl 4.1;
import std;
backend default { .host = "127.0.0.1"; .port = "8080"; .probe = { .url = "/"; } }
acl local { "127.0.0.1"; "10.0.0.0"/8; ! "10.1.2.3"; }
sub clean {
	if (req.url ~ "^/static/") {
		unset req.http.Cookie;
		return;
	}
	set req.url = regsuball(req.url, "[?&]utm_[a-z]+=[^&]*", "");
}
sub vcl_recv {
	call clean;
	if (client.ip ~ local && req.method == "PURGE") {
		return (purge);
	} elsif (req.http.X-Count) {
		set req.http.X-Count = std.integer(req.http.X-Count, 0) + 1;
	} else {
		set req.ttl = 10s * 2;
	}
}
sub vcl_backend_response {
	set beresp.ttl = std.duration(beresp.http.X-TTL, 1h);
	set beresp.http.X-Now = now + 1m;
}
sub vcl_synth {
	synthetic({"<p>"} + resp.status + "</p>");
	return (deliver);
}
"""

TOKENS = ["{", "}", "(", ")", ";", '"', "+", "-", "*", "/", "%", "~", "!", "&&", "||", "==", "=", ".", ",",
          "req.url", "req.http.x", "return (pass)", "set", "unset", "call", "sub", "if", "else", "elsif", "1",
          "1.5", "10s", "1KB", "true", "std.log", "regsub", "client.ip", "now", '"x"', '{"y"}', "acl", "backend",
          "probe", "import", "include", "new", "synthetic", "hash_data", "ban", "vcl_recv", "default", "\n", " ",
          "#", "/*", "*/", "\\", "\t", "vcl 4.1;"]


def mutate(rng: random.Random, src: str) -> str:
    for _ in range(rng.randint(1, 4)):
        pos = rng.randrange(len(src) + 1)
        op = rng.random()
        if op < 0.4:
            src = src[:pos] + rng.choice(TOKENS) + src[pos:]
        elif op < 0.8:
            src = src[:pos] + src[pos + rng.randint(1, 8):]
        else:
            j = rng.randrange(len(src) + 1)
            src = src[:pos] + src[j:j + 20] + src[pos:]
    return src


@pytest.mark.parametrize("seed", range(4))
def test_mutated_vcl_compiles_or_raises_vclerror(seed):
    rng = random.Random(seed)
    builtin = Path(__file__).resolve().parent.parent / "vcl" / "builtin.vcl"
    seeds = [SEED_VCL, builtin.read_text().replace("vcl 4.1;", "vcl 4.1;\nbackend default none;")]
    for _ in range(60):
        src = mutate(rng, rng.choice(seeds))
        try:
            compile_vcl(src, "fuzz.vcl")
        except VCLError as exc:
            report = str(exc)
            assert report.startswith(("fuzz.vcl:", "<builtin>:")), report
