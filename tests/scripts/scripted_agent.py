#!/usr/bin/python3
"""A scripted agent (no model) that walks the policy-advisor loop from
inside a sandbox: hit a denial, read the skill and the policy, propose the
narrowest rule, wait for the decision, retry. Each step prints one JSON
line: {"step": ..., "status": ..., "body": ...}.

usage: scripted_agent.py loop URL           full loop on a denied PUT
       scripted_agent.py propose RULE_JSON  submit one addRule, print the reply
       scripted_agent.py wait ID [TIMEOUT]  /wait on a chunk
       scripted_agent.py raw METHOD PATH [BODY]  one policy.local request
"""

import json
import sys
import urllib.error
import urllib.request
from urllib.parse import urlparse

POLICY_LOCAL = "http://policy.local"


def request(method, url, body=None, headers=None):
    data = body.encode() if isinstance(body, str) else body
    req = urllib.request.Request(url, data=data, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=330) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def say(step, status, body):
    try:
        body = json.loads(body)
    except (TypeError, ValueError):
        pass
    print(json.dumps({"step": step, "status": status, "body": body}), flush=True)
    return body


def propose(rule_name, rule, intent):
    proposal = {
        "intent_summary": intent,
        "operations": [{"addRule": {"ruleName": rule_name, "rule": rule}}],
    }
    return request(
        "POST",
        POLICY_LOCAL + "/v1/proposals",
        json.dumps(proposal),
        {"Content-Type": "application/json"},
    )


def loop(url):
    status, body = request("PUT", url, '{"message":"update"}', {"Content-Type": "application/json"})
    denial = say("deny", status, body)
    if status != 403:
        return 1
    status, skill = request("GET", POLICY_LOCAL + "/v1/skill")
    say("skill", status, "read %d bytes" % len(skill))
    status, body = request("GET", POLICY_LOCAL + "/v1/policy/current")
    say("policy", status, body)
    status, body = request("GET", POLICY_LOCAL + "/v1/denials?last=5")
    say("denials", status, body)
    # The narrowest rule: this host, port, binary, method and path.
    target = urlparse(url)
    rule = {
        "endpoints": [
            {
                "host": denial["host"],
                "port": denial["port"],
                "protocol": "rest",
                "enforcement": "enforce",
                "rules": [{"allow": {"method": denial["method"], "path": denial["path"]}}],
            }
        ],
        "binaries": [{"path": denial["binary"]}],
    }
    status, body = propose("contents_write", rule, "write one file at %s" % target.path)
    reply = say("submit", status, body)
    if status != 202 or not reply.get("accepted_chunk_ids"):
        return 1
    chunk = reply["accepted_chunk_ids"][0]
    status, body = request("GET", "%s/v1/proposals/%s/wait?timeout=120" % (POLICY_LOCAL, chunk))
    decision = say("wait", status, body)
    if decision.get("status") != "approved" or not decision.get("policy_reloaded"):
        return 1
    status, body = request("PUT", url, '{"message":"update"}', {"Content-Type": "application/json"})
    say("retry", status, body)
    return 0


def main(argv):
    if argv[0] == "loop":
        return loop(argv[1])
    if argv[0] == "propose":
        rule = json.loads(argv[2])
        status, body = propose(argv[1], rule, "scripted proposal")
        say("submit", status, body)
        return 0
    if argv[0] == "wait":
        timeout = argv[2] if len(argv) > 2 else "60"
        status, body = request("GET", "%s/v1/proposals/%s/wait?timeout=%s" % (POLICY_LOCAL, argv[1], timeout))
        say("wait", status, body)
        return 0
    if argv[0] == "raw":
        body = argv[3] if len(argv) > 3 else None
        status, text = request(argv[1], POLICY_LOCAL + argv[2], body, {"Content-Type": "application/json"})
        say("raw", status, text)
        return 0
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
