"""HTTP-level escape attempts through the L7 proxy, run inside a sandbox.

The policy allows only `GET /public/**` on HOST:PORT. The upstream
answers every request with JSON naming the path it received, so an escape
is any reply showing a path outside /public, or a canary (CANARY4:9999)
seeing the request. Prints one JSON line per attempt.

usage: http_attacks.py HOST PORT CANARY4
"""

import json
import socket
import sys

HOST, PORT, CANARY = sys.argv[1], int(sys.argv[2]), sys.argv[3]
H = f"{HOST}:{PORT}"


def exchange(raw):
    with socket.create_connection((HOST, PORT), timeout=5) as s:
        s.sendall(raw)
        got = b""
        try:
            while len(got) < 65536:
                chunk = s.recv(65536)
                if not chunk:
                    break
                got += chunk
        except (socket.timeout, ConnectionResetError):
            pass
    return got


def attempt(name, raw):
    try:
        got = exchange(raw)
    except OSError as e:
        print(json.dumps({"attempt": name, "escaped": False, "detail": f"{type(e).__name__}: {e}"}), flush=True)
        return
    text = got.decode("latin-1")
    status = text.split("\r\n", 1)[0]
    # The upstream echoes the path it served; anything outside /public is
    # a request the policy did not allow.
    escaped = '"path": "/' in text and '"path": "/public' not in text
    escaped = escaped or "CANARY" in text
    print(json.dumps({"attempt": name, "escaped": escaped, "detail": status}), flush=True)


ATTEMPTS = [
    ("absolute-form aimed at another host", f"GET http://{CANARY}:9999/ESCAPE HTTP/1.1\r\nHost: {CANARY}:9999\r\n\r\n"),
    ("CONNECT through the proxy", f"CONNECT {CANARY}:9999 HTTP/1.1\r\nHost: {CANARY}:9999\r\n\r\nESCAPE\r\n"),
    ("Host header naming another host", f"GET /public/x HTTP/1.1\r\nHost: {CANARY}:9999\r\n\r\n"),
    ("HTTP/1.0 without Host to a denied path", "GET /admin HTTP/1.0\r\n\r\n"),
    ("dot-dot out of /public", f"GET /public/../admin HTTP/1.1\r\nHost: {H}\r\n\r\n"),
    ("encoded dot-dot", f"GET /public/%2e%2e/admin HTTP/1.1\r\nHost: {H}\r\n\r\n"),
    ("encoded slash", f"GET /public%2f..%2fadmin HTTP/1.1\r\nHost: {H}\r\n\r\n"),
    ("double slash", f"GET //admin HTTP/1.1\r\nHost: {H}\r\n\r\n"),
    ("semicolon segment", f"GET /public/..;/admin HTTP/1.1\r\nHost: {H}\r\n\r\n"),
    ("overlong UTF-8 dots", f"GET /public/%c0%ae%c0%ae/admin HTTP/1.1\r\nHost: {H}\r\n\r\n"),
    (
        "CL.TE smuggling",
        f"GET /public/x HTTP/1.1\r\nHost: {H}\r\nContent-Length: 40\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /admin HTTP/1.1\r\nHost: {H}\r\n\r\n",
    ),
    (
        "TE.CL smuggling",
        f"GET /public/x HTTP/1.1\r\nHost: {H}\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n2a\r\nGET /admin HTTP/1.1\r\nHost: {H}\r\n\r\n\r\n0\r\n\r\n",
    ),
    (
        "duplicate Content-Length",
        f"GET /public/x HTTP/1.1\r\nHost: {H}\r\nContent-Length: 0\r\nContent-Length: 38\r\n\r\nGET /admin HTTP/1.1\r\nHost: {H}\r\n\r\n",
    ),
    ("obs-fold header", f"GET /public/x HTTP/1.1\r\nHost: {H}\r\nX-Fold: a\r\n b\r\n\r\n"),
    (
        "WebSocket upgrade on a denied path",
        f"GET /admin HTTP/1.1\r\nHost: {H}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
    ),
    (
        "a second request on a kept-alive connection to a denied path",
        f"GET /public/ok HTTP/1.1\r\nHost: {H}\r\n\r\nGET /admin HTTP/1.1\r\nHost: {H}\r\n\r\n",
    ),
]

for name, raw in ATTEMPTS:
    attempt(name, raw.encode("latin-1"))
