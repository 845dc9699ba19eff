"""Plain HTTP clients for what wrk does not do: checking answers, filling the cache with exactly N
objects, and streaming a huge body while counting its bytes."""

from __future__ import annotations

import asyncio
import http.client
import time

TIMEOUT = 30.0


def get(port: int, path: str, headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    """One GET on a new connection: (status, headers with lower-case names, body)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=TIMEOUT)
    try:
        conn.request("GET", path, headers=headers or {})
        resp = conn.getresponse()
        body = resp.read()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, body
    finally:
        conn.close()


def stream(port: int, path: str) -> tuple[int, int, float]:
    """GET path and read the body as it comes, keeping none of it: (status, bytes, seconds)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=TIMEOUT)
    buf = bytearray(1 << 20)
    try:
        start = time.monotonic()
        conn.request("GET", path)
        resp = conn.getresponse()
        total = 0
        while n := resp.readinto(buf):
            total += n
        return resp.status, total, time.monotonic() - start
    finally:
        conn.close()


async def _fill(port: int, paths: list[str], connections: int) -> int:
    todo = iter(paths)
    failures = 0
    host = f"127.0.0.1:{port}"     # as wrk sends it: the Host is part of the cache key

    async def worker() -> None:
        nonlocal failures
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            for path in todo:
                writer.write(f"GET {path} HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
                head = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n")[1:]:
                    name, _, value = line.partition(b":")
                    if name.strip().lower() == b"content-length":
                        length = int(value)
                if length == 0 and b"chunked" in head.lower():
                    raise RuntimeError("fill expects Content-Length answers")
                await reader.readexactly(length)
                if not head.startswith(b"HTTP/1.1 200"):
                    failures += 1
        finally:
            writer.close()

    await asyncio.wait_for(asyncio.gather(*(worker() for _ in range(connections))), 600)
    return failures


def fill(port: int, paths: list[str], connections: int = 8) -> int:
    """GET every path once over `connections` keep-alive connections; returns how many were not 200."""
    return asyncio.run(_fill(port, paths, connections))
