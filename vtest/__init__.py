"""vtest: a varnishtest-compatible runner for .vtc test cases (see vtc(7))."""
