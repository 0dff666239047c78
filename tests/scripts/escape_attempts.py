"""Escape attempts, run as an unprivileged workload inside a sandbox.

Each attempt prints one JSON line: {"attempt", "escaped", "detail"}.
"escaped" is what the workload itself could observe (a canary's answer,
a privileged socket it was able to open, a write that took effect); the
test also checks the canary's own record, which is the authority.

usage: escape_attempts.py CANARY4 CANARY6 PROXY_PORT CGROUP_ROOT
                          CONTROL_SOCKET SELF_MARK INHERITED_FD
"""

import json
import os
import socket
import struct
import sys

CANARY_PORT = 9999
ANSWER = b"CANARY"


def report(name, escaped, detail):
    print(json.dumps({"attempt": name, "escaped": escaped, "detail": detail}), flush=True)


def attempt(name, fn):
    try:
        escaped, detail = fn()
    except OSError as e:
        escaped, detail = False, f"{type(e).__name__}: {e}"
    report(name, escaped, detail)


def tcp(family, address, payload):
    """Connects, sends a marked payload, and reports whether the canary
    answered. The proxy may accept the connect (it is redirected there);
    what matters is that nothing reaches the canary."""

    def run():
        with socket.socket(family, socket.SOCK_STREAM) as s:
            s.settimeout(3)
            s.connect(address)
            s.sendall(payload)
            try:
                got = s.recv(4096)
            except (socket.timeout, ConnectionResetError) as e:
                return False, f"connected to the proxy, then {type(e).__name__}"
            return ANSWER in got, f"answer: {got[:80]!r}"

    return run


def udp(address, payload):
    def run():
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.settimeout(2)
            s.sendto(payload, address)
            try:
                got = s.recv(4096)
            except socket.timeout:
                return False, "sent, no answer"
            return ANSWER in got, f"answer: {got[:80]!r}"

    return run


def dns_query(name):
    header = struct.pack(">HHHHHH", 0x1234, 0x0100, 1, 0, 0, 0)
    labels = b"".join(bytes([len(p)]) + p.encode() for p in name.split("."))
    return header + labels + b"\x00" + struct.pack(">HH", 1, 1)


def opens(family, kind, proto=0):
    def run():
        s = socket.socket(family, kind, proto)
        s.close()
        return True, "the socket opened"

    return run


def write_file(path, text):
    def run():
        with open(path, "w") as f:
            f.write(text)
        return True, f"wrote {path}"

    return run


def connect_unix(path):
    def run():
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.connect(path)
        return True, "connected to the control socket"

    return run


def set_mark(mark):
    def run():
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.setsockopt(socket.SOL_SOCKET, 36, mark)  # SO_MARK
        return True, f"SO_MARK {mark:#x} set"

    return run


def inherited(fd):
    def run():
        os.fstat(fd)
        os.write(fd, b"ESCAPE inherited-socket\n")
        return True, f"fd {fd} is open and writable"

    return run


def main():
    canary4, canary6, proxy_port, cgroup_root, control, mark, fd = sys.argv[1:8]
    proxy_port, mark, fd = int(proxy_port), int(mark), int(fd)
    mapped = "::ffff:" + canary4
    attempts = [
        ("tcp to a denied IPv4 address", tcp(socket.AF_INET, (canary4, CANARY_PORT), b"ESCAPE tcp4\n")),
        ("tcp to a denied IPv6 literal", tcp(socket.AF_INET6, (canary6, CANARY_PORT), b"ESCAPE tcp6\n")),
        ("tcp to an IPv4-mapped IPv6 address", tcp(socket.AF_INET6, (mapped, CANARY_PORT), b"ESCAPE mapped\n")),
        (
            "tcp to the proxy's own port, naming the canary",
            tcp(
                socket.AF_INET,
                ("127.0.0.1", proxy_port),
                f"GET http://{canary4}:{CANARY_PORT}/ESCAPE-proxy-port HTTP/1.1\r\nHost: {canary4}:{CANARY_PORT}\r\n\r\n".encode(),
            ),
        ),
        ("udp dns to an outside resolver", udp((canary4, 53), dns_query("escape-udp-dns.example"))),
        ("udp quic to port 443", udp((canary4, 443), b"\xc0ESCAPE quic initial")),
        (
            "dns over tcp to an outside resolver",
            tcp(socket.AF_INET, (canary4, 53), struct.pack(">H", 40) + dns_query("escape-tcp-dns.example")),
        ),
        ("raw socket", opens(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)),
        ("packet socket", opens(socket.AF_PACKET, socket.SOCK_RAW)),
        ("leave the sandbox cgroup", write_file(os.path.join(cgroup_root, "cgroup.procs"), str(os.getpid()))),
        ("connect to the control socket", connect_unix(control)),
        ("set the agent's SO_MARK", set_mark(mark)),
        ("use a connection opened before joining the sandbox", inherited(fd)),
    ]
    for name, fn in attempts:
        attempt(name, fn)


if __name__ == "__main__":
    main()
