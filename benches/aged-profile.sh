#!/usr/bin/env bash
# Instructions per single event on a daemon that already holds millions of event ids,
# against a fresh one (callgrind, the N1/N2 difference of benches/run.sh's profile
# phase, so that start-up and the journal replay cancel out).
#
# The profile phase of benches/run.sh measures fresh daemons; the latency rounds (T5,
# T6) run on a daemon the batch rounds have filled. This script measures what that
# filling costs each later request:
#
#   1. a daemon (durability fsync, pinned to CPU 1) takes AGE_REQS 1,000-event batches
#      (default 6,000: 6 million distinct ids), then settles (no flush or compaction
#      running or pending) and stops;
#   2. it restarts on the same data under callgrind; 200 single events warm it up, it
#      settles again, and the instructions of 500 and then 1,500 more single events over
#      8 connections are counted;
#   3. the same on a fresh data dir (skip with FRESH=0).
#
# Usage: bash benches/aged-profile.sh      (about 6 minutes; needs a release build and
# valgrind, which `bash benches/run.sh` installs). METERD=/path measures another build.
# Results and callgrind dumps stay in $CARGO_TARGET_DIR/aged-profile.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh
cargo build --release --bin meterd --example loadgen >&2
M=${METERD:-$CARGO_TARGET_DIR/release/meterd}
LG=$CARGO_TARGET_DIR/release/examples/loadgen
W=$CARGO_TARGET_DIR/aged-profile
AGE_REQS=${AGE_REQS:-6000}
KEY="bench-$(od -An -N16 -tx1 /dev/urandom | tr -d ' \n')"
SHA=$(printf '%s' "$KEY" | sha256sum | cut -d' ' -f1)
PID=""
trap '[ -n "$PID" ] && kill -9 "$PID" 2>/dev/null || true' EXIT

conf() {
  cat >"$1/meterd.toml" <<EOF
listen = "127.0.0.1:0"
metrics_listen = "127.0.0.1:0"
data_dir = "$1/data"
durability = "fsync"
flush_interval = "1s"
lateness = "1h"

[[api_keys]]
tenant = "default"
role = "admin"
sha256 = "$SHA"
name = "bench"
EOF
}

# start DIR [WRAPPER...]: sets PID, API and METRICS once the daemon is ready.
start() {
  local d=$1
  shift
  : >"$d/log"
  RUST_LOG=info,meterd::access=off "$@" "$M" serve --config "$d/meterd.toml" \
    --data-dir "$d/data" >>"$d/log" 2>&1 &
  PID=$!
  API=""
  for _ in $(seq 1 3000); do
    API=$(sed -n 's|.*listening on http://\([^ ]*\) .*|\1|p' "$d/log" | head -n1)
    METRICS=$(sed -n 's|.*metrics on http://\([^)]*\)).*|\1|p' "$d/log" | head -n1)
    [ -n "$API" ] && curl -sf "http://$API/readyz" >/dev/null && return 0
    sleep 0.2
  done
  echo "meterd did not become ready: $(tail -n5 "$d/log")" >&2
  exit 1
}

stop() {
  kill "$1" "$PID"
  wait "$PID" 2>/dev/null || true
  PID=""
}

api() {
  curl -sSf -o /dev/null -X "$1" -H "Authorization: Bearer $KEY" \
    -H 'Content-Type: application/json' --data-binary "$3" "http://$API$2"
}

setup() {
  api PUT /v1/levers/bench_calls '{"aggregation":"sum","unit":"events"}'
  for i in 0 1 2 3 4 5 6 7; do
    api PUT "/v1/contracts/bench-c$i" '{"customer":"bench"}'
  done
}

# busy: RocksDB jobs running plus 1 if compaction bytes are pending ("x" if no scrape).
busy() {
  curl -s --max-time 20 "http://$METRICS/metrics" | awk '
    /^meterd_store_background_jobs/ { s += $2; n++ }
    /^meterd_store_pending_compaction_bytes/ { if ($2 > 0) s += 1 }
    END { if (n) print s; else print "x" }'
}

settle() {
  local i
  for i in $(seq 1 2400); do
    [ "$(busy)" = 0 ] && break
    sleep 0.5
  done
  echo "settled after $((i / 2)) s" >&2
}

# measure DIR LABEL: prints LABEL and the instructions per single event.
measure() {
  local d=$1 i1 i2
  start "$d" valgrind --tool=callgrind --callgrind-out-file="$d/cg.out"
  local a=(--url "http://$API" --key "$KEY" --conns 8 --body single --contract-prefix bench-c)
  "$LG" run "${a[@]}" --requests 200 >/dev/null
  settle
  callgrind_control -z "$PID" >/dev/null 2>&1 || true
  "$LG" run "${a[@]}" --requests 500 >"$d/n1.txt"
  callgrind_control -d "$PID" >/dev/null 2>&1 || true
  "$LG" run "${a[@]}" --requests 1500 >"$d/n2.txt"
  callgrind_control -d "$PID" >/dev/null 2>&1 || true
  sleep 1
  stop -9
  i1=$(sed -n 's/^summary: //p' "$d/cg.out.1")
  i2=$(sed -n 's/^summary: //p' "$d/cg.out.2")
  echo "$2: $(((i2 - i1) / 1000)) instructions per single event (500 events: $i1, 1,500: $i2)"
}

rm -rf "$W"
mkdir -p "$W/aged" "$W/fresh"
conf "$W/aged"
conf "$W/fresh"

start "$W/aged" taskset -c 1
setup
"$LG" run --url "http://$API" --key "$KEY" --conns 4 --body batch --events 1000 \
  --contract-prefix bench-c --requests "$AGE_REQS" | sed -n 's/^LOADGEN //p' >&2
settle
curl -s "http://$METRICS/metrics" | grep -E '^meterd_store_(size|memory)_bytes' >&2 || true
stop -TERM
echo "aged data: $(du -sh "$W/aged/data" | cut -f1), $AGE_REQS x 1,000 ids" >&2
measure "$W/aged" aged
if [ "${FRESH:-1}" != 0 ]; then
  start "$W/fresh"
  setup
  stop -TERM
  measure "$W/fresh" fresh
fi
