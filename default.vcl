sub vcl_recv {
	if (req.url == "/tcp") {
		if (tinykvm.steal("hello", req.url)) {
			return (synth(123));
		}
		return (synth(500));
	}
}
