"""vtest: a varnishtest-compatible runner for .vtc test cases (vtc(7), varnishtest(1)).

    vtest [-j N] [-k] [-q] [-v] [-l|-L] [-n N] [-t SECONDS] [-D name=value] [-p name=value]
          [--varnishd PATH] [--dump-counters DIR] FILE...

Each test runs in its own worker process (`vtest.worker`) with its own temporary directory; the CLI
prints one line per finished test and a last "N passed, N failed, N skipped" line, and exits 0 only
when nothing failed. Without -k it starts no new test after a failure, like varnishtest.

Modules: parse (tokens), macros, http (client/server specs), entities (server/client threads),
barrier, tunnel, varnish (varnishd driven over its -M CLI), runner (top-level commands), worker (one test),
execute (one worker process), cli (the command), pytest_plugin (tests/vtc/*.vtc as pytest items).

`varnish vN` starts `python -m cacheserver` by default, with the flags varnishtest gives varnishd;
--varnishd PATH runs a real varnishd instead. `-expect COUNTER` reads counters with varnishstat for a
real varnishd, and with the cacheserver CLI command `counters.list` (see cacheserver/admin.py).
--dump-counters DIR (off by default) writes, when each `varnish vN` is waited for (`-wait`, or the end of
the case), all its counters from that same source to DIR/<case>.<vN>.json: a differential check of
cacheserver's counters against varnishd's runs every case twice and compares the files.
Commands vtest does not implement (logexpect, process, shell, haproxy, syslog, HTTP/2 streams) make a test skipped, with the reason, before anything runs.
"""
