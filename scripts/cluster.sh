#!/usr/bin/env bash
# A local meterd cluster: 3 NATS servers (scripts/nats.sh) and 3 meterd nodes, all on
# 127.0.0.1 with free ports, everything under DIR.
#
#   scripts/cluster.sh up DIR      starts them, waits until every meterd answers
#                                  /readyz, writes DIR/cluster.json
#   scripts/cluster.sh down DIR    stops them (meterd first, then NATS)
#
# DIR/cluster.json: {"processes": [...], "tenant": "default", "keys": {...}}. Each
# process has kind (nats or meterd), name and pid; a nats process has client_url and
# cluster_url (and monitor_url), a meterd process api_url and metrics_url (and
# data_dir, config, log). keys holds the plain admin, ingest and read API keys of the
# tenant `default`, generated afresh for this cluster.
#
# Environment: METERD (the binary; default: the release build, built if missing),
# PARTITIONS (default 6), LEASE_TTL (default 6s), LEASE_RENEW (default 2s),
# NODES (meterd nodes, default 3), RUST_LOG (default info).
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/.." && pwd)

die() { echo "cluster.sh: $*" >&2; exit 1; }

meterd_bin() {
  if [ -n "${METERD:-}" ]; then
    echo "$METERD"
    return
  fi
  # shellcheck source=scripts/env.sh
  source "$here/env.sh"
  local bin="$CARGO_TARGET_DIR/release/meterd"
  if ! [ -x "$bin" ]; then
    (cd "$root" && cargo build --release --bin meterd >&2)
  fi
  echo "$bin"
}

free_ports() {
  python3 - "$1" <<'PY'
import socket, sys
socks = []
for _ in range(int(sys.argv[1])):
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    socks.append(s)
print("\n".join(str(s.getsockname()[1]) for s in socks))
for s in socks:
    s.close()
PY
}

ready() {
  python3 - "$1" <<'PY'
import sys, urllib.request
try:
    urllib.request.urlopen(f"{sys.argv[1]}/readyz", timeout=2).read()
except Exception:
    sys.exit(1)
PY
}

up() {
  local dir=$1
  [ -n "$dir" ] || die "usage: cluster.sh up DIR"
  mkdir -p "$dir"
  dir=$(cd "$dir" && pwd)
  [ -e "$dir/cluster.json" ] && die "$dir/cluster.json exists: run 'cluster.sh down $dir' first"
  local bin n=${NODES:-3}
  bin=$(meterd_bin)
  bash "$here/nats.sh" up "$dir/nats" 3 >/dev/null
  local urls
  urls=$(python3 -c 'import json,sys; print(", ".join("\"%s\"" % s["client_url"] for s in json.load(open(sys.argv[1]))))' "$dir/nats/nats.json")
  # The keys of the tenant `default`: plain for cluster.json, hashed in the configs.
  local keys
  keys=$(python3 - <<'PY'
import hashlib, json, secrets
keys = {r: f"{r}-{secrets.token_hex(16)}" for r in ("admin", "ingest", "read")}
print(json.dumps({"plain": keys, "sha": {r: hashlib.sha256(k.encode()).hexdigest() for r, k in keys.items()}}))
PY
)
  local ports=()
  mapfile -t ports < <(free_ports $((2 * n)))
  local entries=() i
  for i in $(seq 1 "$n"); do
    local name="meterd-$i" ndir="$dir/meterd-$i"
    local api=${ports[$((2 * i - 2))]} metrics=${ports[$((2 * i - 1))]}
    mkdir -p "$ndir"
    {
      echo "listen = \"127.0.0.1:$api\""
      echo "metrics_listen = \"127.0.0.1:$metrics\""
      echo "data_dir = \"$ndir/data\""
      echo "flush_interval = \"500ms\""
      # Forwarded requests must fit the NATS servers' max_payload (8 MB) twice.
      echo "max_body_bytes = 2097152"
      echo
      echo "[[tenants]]"
      echo "name = \"default\""
      for role in admin ingest read; do
        echo
        echo "[[api_keys]]"
        echo "tenant = \"default\""
        echo "role = \"$role\""
        echo "sha256 = \"$(python3 -c 'import json,sys; print(json.loads(sys.argv[1])["sha"][sys.argv[2]])' "$keys" "$role")\""
      done
      echo
      echo "[cluster]"
      echo "node = \"$name\""
      echo "nats_urls = [$urls]"
      echo "partitions = ${PARTITIONS:-6}"
      echo "lease_ttl = \"${LEASE_TTL:-6s}\""
      echo "lease_renew = \"${LEASE_RENEW:-2s}\""
    } >"$ndir/meterd.toml"
    RUST_LOG="${RUST_LOG:-info}" "$bin" serve --config "$ndir/meterd.toml" >"$ndir/log" 2>&1 &
    echo $! >"$ndir/pid"
    entries+=("{\"kind\":\"meterd\",\"name\":\"$name\",\"pid\":$!,\"api_url\":\"http://127.0.0.1:$api\",\"metrics_url\":\"http://127.0.0.1:$metrics\",\"data_dir\":\"$ndir/data\",\"config\":\"$ndir/meterd.toml\",\"log\":\"$ndir/log\"}")
  done
  local deadline=$((SECONDS + 120))
  for i in $(seq 1 "$n"); do
    local api=${ports[$((2 * i - 2))]}
    until ready "http://127.0.0.1:$api"; do
      if ! kill -0 "$(cat "$dir/meterd-$i/pid")" 2>/dev/null || [ $SECONDS -ge $deadline ]; then
        tail -n 30 "$dir/meterd-$i/log" >&2 || true
        down "$dir" || true
        die "meterd-$i not ready (log above, $dir/meterd-$i/log)"
      fi
      sleep 0.2
    done
  done
  python3 - "$dir" "$keys" "${entries[@]}" <<'PY'
import json, sys
d, keys, entries = sys.argv[1], json.loads(sys.argv[2]), sys.argv[3:]
nats = json.load(open(f"{d}/nats/nats.json"))
out = {"processes": nats + [json.loads(e) for e in entries], "tenant": "default", "keys": keys["plain"]}
json.dump(out, open(f"{d}/cluster.json", "w"), indent=2)
PY
  echo "$dir/cluster.json"
}

stop_pid() {
  local pid=$1
  kill -0 "$pid" 2>/dev/null || return 0
  # A stopped (SIGSTOP) process must be continued to see the SIGTERM.
  kill -CONT "$pid" 2>/dev/null || true
  kill -TERM "$pid" 2>/dev/null || true
  for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || return 0; sleep 0.1; done
  kill -KILL "$pid" 2>/dev/null || true
}

down() {
  local dir=$1
  [ -n "$dir" ] || die "usage: cluster.sh down DIR"
  local pidf
  for pidf in "$dir"/meterd-*/pid; do
    [ -f "$pidf" ] || continue
    stop_pid "$(cat "$pidf")" &
  done
  wait
  [ -d "$dir/nats" ] && bash "$here/nats.sh" down "$dir/nats"
  rm -f "$dir/cluster.json"
}

case "${1:-}" in
  up) up "${2:-}" ;;
  down) down "${2:-}" ;;
  *) die "usage: cluster.sh up DIR | down DIR" ;;
esac
