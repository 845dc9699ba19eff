"""A backend program that answers with JSON describing the request it got.

VCL:  sub vcl_backend_fetch { set bereq.backend = tinykvm.program("json_api", "v1"); }
      curl -s http://127.0.0.1:8080/some/path -H 'X-Demo: 1'
      {"method": "GET", "url": "/some/path", "arg": "v1", "headers": {"host": ..., "x-demo": "1"},
       "body_length": 0}

Only the request headers named in SHOWN (and any X-* header) are echoed.
"""

import json

from kvm_api import backend_response, request, set_backend_get, set_backend_post, wait_for_requests

SHOWN = ("host", "user-agent", "accept", "content-type", "content-length")


def describe() -> bytes:
    req = request()
    headers = {}
    for name, value in req.headers:
        lname = name.lower()
        if lname in SHOWN or lname.startswith("x-"):
            headers.setdefault(lname, value)
    answer = {"method": req.method, "url": req.url, "arg": req.arg, "headers": headers,
              "body_length": len(req.body)}
    return json.dumps(answer, sort_keys=True).encode() + b"\n"


def on_get(url: str, arg: str) -> None:
    backend_response(200, "application/json", describe(), {"Cache-Control": "max-age=5"})


def on_post(url: str, arg: str, content_type: str, body: bytes) -> None:
    backend_response(200, "application/json", describe(), {"Cache-Control": "no-store"})


set_backend_get(on_get)
set_backend_post(on_post)
wait_for_requests()
