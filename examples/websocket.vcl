vcl 4.1;

import tinykvm;

backend default none;

# /echo: the connection is handed to programs/echo.py, which echoes every byte it gets.
# WebSocket echo on /ws: the connection is handed to programs/websocket_echo.py, which answers the
# handshake (101) and echoes messages. The program does not see the request head, so VCL checks the
# upgrade request and passes the client's key as the steal argument.
sub vcl_recv {
	if (req.url == "/echo") {
		if (tinykvm.steal("echo")) {
			return (synth(123));
		}
		return (synth(500));
	}
	if (req.url == "/ws") {
		if (req.http.Sec-WebSocket-Version != "13") {
			return (synth(426, "Upgrade Required"));
		}
		if (req.method == "GET" && req.http.Upgrade ~ "(?i)^websocket$" &&
		    req.http.Connection ~ "(?i)\bupgrade\b" &&
		    tinykvm.steal("websocket_echo", req.http.Sec-WebSocket-Key)) {
			return (synth(123));
		}
		return (synth(400, "Bad WebSocket handshake"));
	}
	return (synth(404));
}

sub vcl_synth {
	if (resp.status == 426) {
		# RFC 6455 4.4: say which version we speak.
		set resp.http.Sec-WebSocket-Version = "13";
	}
}
