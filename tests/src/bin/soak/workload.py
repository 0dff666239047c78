# The soak workload, run inside the sandbox as `nobody`:
#   python3 -c SCRIPT SECONDS HOST PORT RATE
# Until SECONDS have passed it cycles through allowed and denied requests,
# DNS lookups and (every 10 s) a proposal, at about RATE operations a
# second, and prints its cumulative counts as one JSON line a second, then
# a last line with "done": true.
import http.client, json, socket, sys, time

SECONDS, HOST, PORT, RATE = float(sys.argv[1]), sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
# Proposals are rate limited to a burst of 20, then one every 3 s: one
# every 10 s never meets the limit.
PROPOSAL_EVERY = 10.0
# Bounded name sets: a real workload looks up a bounded set of names, and
# the DNS responder keeps dead leases until its pool is full (by design).
DENIED_HOSTS = 64
UNKNOWN_NAMES = 256

c = dict(requests=0, allowed=0, denied=0, escapes=0, errors=0, dns=0,
         proposals=0, proposals_accepted=0, proposals_limited=0)
last_error = None
keep = None


def fail(what, err):
    global last_error
    c["errors"] += 1
    last_error = f"{what}: {err!r}"[:300]


def fetch(conn, method, path, body=None, headers=None):
    conn.request(method, path, body=body, headers=headers or {})
    r = conn.getresponse()
    r.read()
    return r


def keepalive(path):
    """GET on the kept-alive connection; a connection the proxy closed
    while idle is replaced once, as any HTTP client does."""
    global keep
    for attempt in (0, 1):
        try:
            if keep is None:
                keep = http.client.HTTPConnection(HOST, PORT, timeout=10)
            r = fetch(keep, "GET", path)
            if r.will_close:
                keep.close()
                keep = None
            return r.status
        except (OSError, http.client.HTTPException):
            if keep is not None:
                keep.close()
            keep = None
            if attempt:
                raise


def once(host, port, path):
    """GET on a connection of its own."""
    conn = http.client.HTTPConnection(host, port, timeout=10)
    try:
        return fetch(conn, "GET", path, headers={"Connection": "close"}).status
    finally:
        conn.close()


def expect_allowed(what, op):
    c["requests"] += 1
    try:
        status = op()
    except (OSError, http.client.HTTPException) as e:
        return fail(what, e)
    if status == 200:
        c["allowed"] += 1
    else:
        fail(what, f"status {status}")


def expect_denied(what, op):
    global last_error
    c["requests"] += 1
    try:
        status = op()
    except ConnectionError:
        # Refused, reset or closed without an answer: the deny path.
        c["denied"] += 1
        return
    except (OSError, http.client.HTTPException) as e:
        return fail(what, e)
    if status == 403:
        c["denied"] += 1
    elif 200 <= status < 300:
        c["escapes"] += 1
        last_error = f"{what}: ESCAPED with status {status}"
    else:
        fail(what, f"status {status}")


def lookup(name):
    try:
        socket.getaddrinfo(name, PORT, type=socket.SOCK_STREAM)
        c["dns"] += 1
    except OSError as e:
        fail(f"dns {name}", e)


def propose(n):
    rule = {"endpoints": [{"host": f"soak{n}.example.test", "port": 443}],
            "binaries": [{"path": "/usr/bin/curl"}]}
    body = json.dumps({"intent_summary": "soak test",
                       "operations": [{"addRule": {"ruleName": f"soak-{n}", "rule": rule}}]}).encode()
    c["proposals"] += 1
    conn = http.client.HTTPConnection("policy.local", 80, timeout=30)
    try:
        r = fetch(conn, "POST", "/v1/proposals", body,
                  {"Content-Type": "application/json", "Connection": "close"})
    except (OSError, http.client.HTTPException) as e:
        return fail("proposal", e)
    finally:
        conn.close()
    if r.status == 202:
        c["proposals_accepted"] += 1
    elif r.status == 429:
        c["proposals_limited"] += 1
    else:
        fail("proposal", f"status {r.status}")


OPS = [
    lambda n: expect_allowed("keep-alive GET /public", lambda: keepalive(f"/public/k{n}")),
    lambda n: expect_allowed("new-connection GET /public", lambda: once(HOST, PORT, f"/public/n{n}")),
    lambda n: expect_denied("GET /private", lambda: once(HOST, PORT, f"/private/{n}")),
    lambda n: expect_allowed("keep-alive GET /public", lambda: keepalive(f"/public/k{n}")),
    lambda n: lookup(HOST),
    lambda n: expect_denied("host not in policy",
                            lambda: once(f"blocked{n % DENIED_HOSTS}.soak.test", PORT, "/public/x")),
    lambda n: expect_allowed("keep-alive GET /public", lambda: keepalive(f"/public/k{n}")),
    lambda n: expect_denied("port not in policy", lambda: once(HOST, 9999, "/public/x")),
    lambda n: lookup(f"u{n % UNKNOWN_NAMES}.unknown.soak.test"),
    lambda n: expect_allowed("new-connection GET /public", lambda: once(HOST, PORT, f"/public/n{n}")),
]


def report(now, **extra):
    print(json.dumps(dict(c, t=round(now - start, 1), last_error=last_error, **extra)), flush=True)


start = time.monotonic()
deadline = start + SECONDS
next_report = start + 1
next_proposal = start + 2
n = 0
while True:
    now = time.monotonic()
    if now >= deadline:
        break
    if now >= next_proposal:
        propose(c["proposals"])
        next_proposal += PROPOSAL_EVERY
    OPS[n % len(OPS)](n)
    n += 1
    if now >= next_report:
        report(now)
        while next_report <= now:
            next_report += 1
    ahead = start + n / RATE - time.monotonic()
    if ahead > 0:
        time.sleep(ahead)
if keep is not None:
    keep.close()
report(time.monotonic(), done=True)
