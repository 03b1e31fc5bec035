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

# cpu_s PID [THREAD-NAME]: CPU seconds (user + system) of the process, or of its threads
# with that name.
cpu_s() {
  local tick
  tick=$(getconf CLK_TCK)
  {
    if [ -z "${2:-}" ]; then
      cat /proc/"$1"/stat
    else
      for t in /proc/"$1"/task/*; do
        if [ "$(cat "$t/comm" 2>/dev/null)" = "$2" ]; then cat "$t/stat"; fi
      done
    fi
  } 2>/dev/null |
    # Fields after the parenthesised name: utime and stime are the 12th and 13th.
    sed 's/^.*) //' | awk -v tick="$tick" '{ s += $12 + $13 } END { printf "%.2f\n", s / tick }'
}

# dedupe_compaction_mb DATA-DIR: megabytes written by the dedupe column family's
# compactions, summed over RocksDB's "compacted to" log lines.
dedupe_compaction_mb() {
  cat "$1"/LOG "$1"/LOG.old.* 2>/dev/null |
    sed -n 's/.*\[dedupe\] compacted to:.* out(\([0-9.]*\) .*/\1/p' |
    awk '{ s += $1 } END { printf "%.0f\n", s }'
}

rm -rf "$W"
mkdir -p "$W/aged" "$W/fresh"
conf "$W/aged"
conf "$W/fresh"

start "$W/aged" taskset -c 1
setup
cpu0=$(cpu_s "$PID")
low0=$(cpu_s "$PID" 'rocksdb:low')
t0=$(date +%s.%N)
"$LG" run --url "http://$API" --key "$KEY" --conns 4 --body batch --events 1000 \
  --contract-prefix bench-c --requests "$AGE_REQS" | sed -n 's/^LOADGEN //p' >&2
t1=$(date +%s.%N)
cpu1=$(cpu_s "$PID")
settle
cpu2=$(cpu_s "$PID")
low2=$(cpu_s "$PID" 'rocksdb:low')
curl -s "http://$METRICS/metrics" | grep -E '^meterd_store_(size|memory)_bytes' >&2 || true
stop -TERM
echo "aged data: $(du -sh "$W/aged/data" | cut -f1), $AGE_REQS x 1,000 ids" >&2
# What the filling cost: wall time and events/s of the fill, the daemon's CPU per event
# up to the end of the fill and up to the end of the settling (all threads; the second
# includes the compactions the fill left), the compaction threads' share, and what the
# dedupe column family's compactions wrote (from RocksDB's LOG).
awk -v n="$AGE_REQS" -v t0="$t0" -v t1="$t1" -v c0="$cpu0" -v c1="$cpu1" -v c2="$cpu2" \
  -v l0="$low0" -v l2="$low2" -v w="$(dedupe_compaction_mb "$W/aged/data")" 'BEGIN {
  e = n * 1000
  printf "fill: %.1f s, %.0f events/s; CPU per event %.2f us to the end of the fill, %.2f us settled (compaction threads %.2f us); dedupe compactions wrote %.0f MB\n",
    t1 - t0, e / (t1 - t0), (c1 - c0) * 1e6 / e, (c2 - c0) * 1e6 / e, (l2 - l0) * 1e6 / e, w
}'
[ "${PROFILE:-1}" = 0 ] && exit 0
measure "$W/aged" aged
if [ "${FRESH:-1}" != 0 ]; then
  start "$W/fresh"
  setup
  stop -TERM
  measure "$W/fresh" fresh
fi
