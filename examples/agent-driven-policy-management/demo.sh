#!/usr/bin/env bash
# The agent-driven policy loop on one machine, narrated for a person:
# an agent in a sandbox hits a 403, proposes the narrowest rule through
# policy.local, an operator approves it, the policy hot-reloads and the
# agent's retry succeeds. No model: the "agent" is a script.
#
# usage: sudo examples/agent-driven-policy-management/demo.sh [--auto-approve]
#
# Needs root (BPF, cgroups, a network namespace). Everything it creates
# lives under /tmp/portcullis-demo and is removed on exit.
set -euo pipefail

AUTO=0
case "${1:-}" in
  --auto-approve) AUTO=1 ;;
  "") ;;
  *) echo "usage: $0 [--auto-approve]" >&2; exit 2 ;;
esac
[ "$(id -u)" = 0 ] || { echo "run as root: it loads BPF programs and creates a network namespace" >&2; exit 1; }

ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
WORK=/tmp/portcullis-demo
NS=pc-demo
say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

cleanup() {
  [ -n "${AGENT_PID:-}" ] && "$PORTCULLIS" --config "$WORK/agent.yaml" down >/dev/null 2>&1 || true
  [ -n "${UP_PID:-}" ] && kill "$UP_PID" 2>/dev/null || true
  ip netns del "$NS" 2>/dev/null || true
  ip link del pcdemo0 2>/dev/null || true
}
trap cleanup EXIT

say "Building the agent (BPF embedded) and the HTTPS stand-in for a REST API"
(cd "$ROOT" && cargo xtask build >/dev/null && cargo build -q --release -p portcullis-e2e --bin e2e-upstream)
PORTCULLIS="$ROOT/target/release/portcullis"
UPSTREAM="$ROOT/target/release/e2e-upstream"
rm -rf "$WORK" && mkdir -p "$WORK" && chmod 755 "$WORK"

say "Starting api.example.test (203.0.113.250:8443) in network namespace $NS"
cleanup
ip netns add "$NS"
ip link add pcdemo0 type veth peer name pcdemo1
ip link set pcdemo1 netns "$NS"
ip addr add 203.0.113.249/30 dev pcdemo0 && ip link set pcdemo0 up
ip -n "$NS" addr add 203.0.113.250/30 dev pcdemo1
ip -n "$NS" link set pcdemo1 up && ip -n "$NS" link set lo up
"$UPSTREAM" gen-certs "$WORK/certs" api.example.test >/dev/null
ip netns exec "$NS" "$UPSTREAM" serve --tls-port 8443 --plain-port 8080 --cert "$WORK/certs" >/dev/null 2>&1 &
UP_PID=$!

say "Starting the Portcullis agent"
echo "203.0.113.250 api.example.test" > "$WORK/hosts"
cat > "$WORK/agent.yaml" <<YAML
state_dir: $WORK/state
run_dir: $WORK/run
log_dir: $WORK/log
bpffs_dir: /sys/fs/bpf/portcullis-demo
cgroup_parent: portcullis-demo
proxy_port: 21900
dns_port: 21901
self_mark: 0x50430900
hosts_file: $WORK/hosts
skill_dirs: [$WORK/skills]
upstream_extra_roots: [$WORK/certs/ca.pem]
YAML
pc() { "$PORTCULLIS" --config "$WORK/agent.yaml" "$@"; }
pc down >/dev/null 2>&1 || true
pc agent > "$WORK/agent.out" 2> "$WORK/agent.err" &
AGENT_PID=$!
for _ in $(seq 100); do grep -q '^portcullis: ready' "$WORK/agent.out" 2>/dev/null && break; sleep 0.1; done
grep -q '^portcullis: ready' "$WORK/agent.out" || { cat "$WORK/agent.err"; exit 1; }

say "Sandbox 'demo': python may read api.example.test, nothing else"
cat > "$WORK/policy.yaml" <<'YAML'
version: 1
network_policies:
  github_ro:
    endpoints:
      - host: api.example.test
        port: 8443
        protocol: rest
        enforcement: enforce
        access: read-only
    binaries:
      - path: /usr/bin/python3*
YAML
cat "$WORK/policy.yaml"
pc sandbox create demo --policy "$WORK/policy.yaml"

say "The agent tries to write a file (PUT) and reads what policy.local tells it"
cp "$ROOT/tests/scripts/scripted_agent.py" "$WORK/agent.py"
pc run --sandbox demo -- /usr/bin/python3 "$WORK/agent.py" loop \
  https://api.example.test:8443/repos/acme/widgets/contents/README.md > "$WORK/agent.log" &
RUN_PID=$!
CHUNK=""
for _ in $(seq 300); do
  CHUNK="$(pc rule get demo --status pending --json | jq -r '.chunks[0].id // empty')"
  [ -n "$CHUNK" ] && break
  sleep 0.1
done
[ -n "$CHUNK" ] || { echo "no proposal arrived"; cat "$WORK/agent.log"; exit 1; }
jq -c 'select(.step=="deny" or .step=="submit") | {step, status, error: .body.error, layer: .body.layer, method: .body.method, path: .body.path, accepted: .body.accepted_chunk_ids}' "$WORK/agent.log"

say "The operator's inbox"
pc rule get demo --status pending
if [ "$AUTO" = 1 ]; then
  echo "(--auto-approve: approving)"
else
  read -r -p "Approve chunk $CHUNK? [y/N] " answer
  if [ "${answer:-n}" != y ]; then
    read -r -p "Reason for the agent: " reason
    pc rule reject demo --chunk-id "$CHUNK" --reason "$reason"
    wait "$RUN_PID" || true
    jq -c 'select(.step=="wait") | .body | {status, rejection_reason}' "$WORK/agent.log"
    exit 0
  fi
fi
pc rule approve demo --chunk-id "$CHUNK"

say "The agent's /wait returns, and it retries"
wait "$RUN_PID"
jq -c 'select(.step=="wait" or .step=="retry") | {step, status, decision: .body.status, policy_reloaded: .body.policy_reloaded}' "$WORK/agent.log"

say "The audit trail (shorthand log)"
grep -hE 'HTTP:PUT|CONFIG:(PROPOSED|APPROVED|LOADED)' "$WORK"/log/portcullis.*.log | cut -c1-200
say "Done: DENIED -> PROPOSED -> APPROVED -> LOADED -> ALLOWED"
