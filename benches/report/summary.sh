# shellcheck shell=bash
# Sourced by benches/run.sh: the report's summary, every target's measured median
# [min-max] with its verdict, then the server CPU per event and the durable floor tables.

# mem_verdict VALUE LIMIT ROW...: the verdict, or "invalid" when a load's checks failed.
mem_verdict() {
  local v=$1 t=$2 row bad=""
  shift 2
  for row in "$@"; do
    bad+=$(awk -F'\t' -v r="$row" '$1 == r && $6 != "ok" { printf "%s: %s ", r, $6 }' "$MEM")
  done
  if [ -n "$bad" ]; then echo "**invalid** ($bad)"; else verdict "$v" '<=' "$t"; fi
}
report_summary() {
  local bad s s2 c0 c1 k0 k1 raw net i0 i1 g
  echo "## Summary"
  echo
  echo "Medians over the rounds, [min–max] in brackets. A ratio is taken within each round"
  echo "(meterd and its comparison ran back to back), then the median of the per-round ratios."
  echo "Runs whose checks failed (see the raw tables) are left out of the medians."
  bad=$(cat "$TP" "$FL" "$LAT" 2>/dev/null | awk -F'\t' '($9 != "" && $9 != "ok" && NF <= 10) || (NF > 10 && $17 != "ok") { n++ } END { print n + 0 }')
  if [ "$bad" != 0 ]; then
    echo
    echo "**$bad run(s) failed their checks and are left out:**"
    echo
    awk -F'\t' 'NF <= 10 && $9 != "ok" { printf "- throughput round %s, %s: %s\n", $1, $2, $9 }
      NF > 10 && $17 != "ok" { printf "- latency round %s, %s: %s\n", $1, $2, $17 }' "$TP" "$FL" "$LAT"
  fi
  echo
  echo "| | what | measured | target | result |"
  echo "|---|---|---|---|---|"
  if [ -s "$TP" ]; then
    s=$(ratios "$TP" M64b 3 B64 3 | stats)
    echo "| T1 | single-event POST, buffered, $C_T1 conns: meterd / baseline req/s (meterd $(mmm "$(col "$TP" M64b 3 | stats)") req/s, baseline $(mmm "$(col "$TP" B64 3 | stats)")) | $(mmm "$s" 3) | ≥ 0.70 | $(verdict "${s%% *}" '>=' 0.70) |"
    s=$(ratios "$TP" M256f 3 B256 3 | stats)
    echo "| T2 | single-event POST, fsync, $C_T2 conns: meterd / baseline req/s (meterd $(mmm "$(col "$TP" M256f 3 | stats)") req/s, baseline $(mmm "$(col "$TP" B256 3 | stats)")) | $(mmm "$s" 3) | ≥ 0.50 | $(verdict "${s%% *}" '>=' 0.50) |"
    s=$(ratios "$TP" Mbatch 4 B64 3 | stats)
    echo "| T3 | 1,000-event batches, fsync, $C_BATCH conns: meterd events/s / baseline single-event req/s ($C_T1 conns) (meterd $(mmm "$(col "$TP" Mbatch 4 | stats)") events/s; baseline on the batch bodies: $(mmm "$(col "$TP" Bbatch 3 | stats)") req/s = $(mmm "$(col "$TP" Bbatch 4 | stats)") events/s) | $(mmm "$s" 2) | ≥ 15 | $(verdict "${s%% *}" '>=' 15) |"
    s=$(ratios "$TP" MbatchQ 4 Mbatch 4 | stats)
    echo "| T4 | T3 with a hard monthly quota on every event / without (with: $(mmm "$(col "$TP" MbatchQ 4 | stats)") events/s) | $(mmm "$s" 3) | ≥ 0.90 | $(verdict "${s%% *}" '>=' 0.90) |"
  fi
  if [ -s "$LAT" ]; then
    s=$(awk -F'\t' '$2 == "M" && $17 == "ok" { print $6 }' "$LAT" | stats)
    s2=$(awk -F'\t' '$2 == "M" && $17 == "ok" && $12 > 0 { printf "%.4f\n", $10 / $12 }' "$LAT" | stats)
    echo "| T5 | p99 latency, single-event fsync POST at $(fmt "$T5_RATE") req/s (50% of T2's median), $C_T2 conns, from the intended send time | $(mmm "$s" 2) ms | ≤ 5 ms | $(verdict "${s%% *}" '<=' 5) |"
    echo "| T5 | p99 during flushes / p99 between flushes (during: $(mmm "$(awk -F'\t' '$2 == "M" && $17 == "ok" { print $10 }' "$LAT" | stats)" 2) ms; between: $(mmm "$(awk -F'\t' '$2 == "M" && $17 == "ok" { print $12 }' "$LAT" | stats)" 2) ms) | $(mmm "$s2" 2) | ≤ 2 | $(verdict "${s2%% *}" '<=' 2) |"
    s=$(awk -F'\t' '$2 == "M" && $17 == "ok" { print $13 }' "$LAT" | stats)
    echo "| T6 | GET /balance p99 while T5 runs ($SIDE_RATE req/s on $SIDE_CONNS conns) | $(mmm "$s" 3) ms | ≤ 1 ms | $(verdict "${s%% *}" '<=' 1) |"
  fi
  if [ -s "$MEM" ]; then
    read -r _ c0 c1 _ _ _ <<<"$(grep '^counters-ctl' "$MEM")"
    read -r _ k0 k1 _ _ _ <<<"$(grep '^counters-keys' "$MEM")"
    raw=$(awk -v a="$k0" -v b="$k1" -v n="$T7_KEYS" 'BEGIN { printf "%.0f", (b - a) * 1024 / n }')
    net=$(awk -v a="$k0" -v b="$k1" -v c="$c0" -v d="$c1" -v n="$T7_KEYS" 'BEGIN { printf "%.0f", ((b - a) - (d - c)) * 1024 / n }')
    echo "| T7 | RSS per active counter, $(fmt "$T7_KEYS") distinct (contract, lever, bucket, minute) keys, net of a same-size one-key control (raw, control included: $raw B) | $net B | ≤ 300 B | $(mem_verdict "$net" 300 counters-ctl counters-keys) |"
    read -r _ i0 i1 _ _ _ <<<"$(grep '^ids' "$MEM")"
    g=$(awk -v a="$i0" -v b="$i1" 'BEGIN { printf "%.1f", (b - a) / 1024 }')
    echo "| T7 | RSS growth over $(fmt "$T7_IDS") distinct event ids | $g MiB | ≤ 64 MiB | $(mem_verdict "$g" 64 ids) |"
  fi
  if [ -s "$RST" ]; then
    s=$(cut -f2 "$RST" | stats)
    echo "| T8 | ready (/readyz 200) after kill -9 with $(fmt "$T8_EVENTS") accepted, unflushed events ($(wc -l <"$RST") restarts) | $(mmm "$s") ms | ≤ 5,000 ms | $(verdict "${s%% *}" '<=' 5000) |"
  fi
  if [ -s "$TP" ]; then
    s=$(ratios "$TP" M256f 3 "pg$C_T2" 3 | stats)
    echo "| T9 | single-event fsync ($C_T2 conns) / PostgreSQL peer tps ($C_T2 clients) (PostgreSQL $(mmm "$(col "$TP" "pg$C_T2" 3 | stats)") tps) | $(mmm "$s" 2) | ≥ 5 | $(verdict "${s%% *}" '>=' 5) |"
    s=$(ratios "$TP" M64b 3 "redis$C_T1" 3 | stats)
    echo "| – | single-event buffered ($C_T1 conns) / Redis peer (appendfsync everysec, $C_T1 clients) (Redis $(mmm "$(col "$TP" "redis$C_T1" 3 | stats)") req/s) | $(mmm "$s" 3) | (reported) | |"
  fi
}
# cpu_us CONFIG: server CPU µs per event of each of its runs whose checks passed.
cpu_us() { awk -F'\t' -v n="$1" '$2 == n && $9 == "ok" && $8 != "" && $4 > 0 { printf "%.4f\n", $8 * 10000 / $4 }' "$TP"; }
cpu_ratio() { # baseline config, meterd config, factor: per-round baseline µs / meterd µs x factor
  awk -F'\t' -v a="$1" -v b="$2" -v f="$3" '$9 != "ok" || $8 == "" || $4 <= 0 { next }
    $2 == a { x[$1] += $8 * 10000 / $4; nx[$1]++ } $2 == b { y[$1] += $8 * 10000 / $4; ny[$1]++ }
    END { for (r in x) if (r in y && y[r] > 0) printf "%.4f\n", (x[r] / nx[r]) / (y[r] / ny[r]) * f }' "$TP"
}
# report_cpu_per_event: the server's CPU time per event of each throughput config.
report_cpu_per_event() {
  local c r
  if [ -s "$TP" ]; then
    echo
    echo "### Server CPU per event (derived)"
    echo
    echo "The generator and the servers shared their CPUs with other processes, and the baseline"
    echo "never used its whole CPU (it waits on the round trip), so req/s ratios mix server cost"
    echo "with scheduling. The server's CPU time per event (its CPU share over the run / events per"
    echo "second, user + system, from /proc/PID/stat) is the cost itself; the last column is the"
    echo "ratio a target would show if the server CPU were the only bound (baseline µs / meterd µs)."
    echo
    echo "| config | server CPU µs per event | if CPU-bound: ratio to the baseline |"
    echo "|---|---|---|"
    for c in B64 M64b B256 M256f Bbatch Mbatch MbatchQ; do
      case $c in
        M64b) r="T1: $(mmm "$(cpu_ratio B64 M64b 1 | stats)" 3) (target ≥ 0.70)" ;;
        M256f) r="T2: $(mmm "$(cpu_ratio B256 M256f 1 | stats)" 3) (target ≥ 0.50)" ;;
        Mbatch) r="T3: $(mmm "$(cpu_ratio B64 Mbatch 1 | stats)" 2) x the baseline's single-event rate (target ≥ 15)" ;;
        MbatchQ) r="T4: $(mmm "$(cpu_ratio Mbatch MbatchQ 1 | stats)" 3) (target ≥ 0.90)" ;;
        *) r="" ;;
      esac
      echo "| $c | $(mmm "$(cpu_us "$c" | stats)" 2) | $r |"
    done
  fi
}
# fl_cpu CONFIG: "median min max" of the server CPU µs per event of a floor-round config.
fl_cpu() { awk -F'\t' -v n="$1" '$2 == n && $9 == "ok" && $8 != "" && $4 > 0 { printf "%.4f\n", $8 * 10000 / $4 }' "$FL" | stats; }
# report_floor: floor / baseline, meterd / baseline and meterd / floor per shape.
report_floor() {
  local shape b f mm fld bfld what tgt d
  if [ -s "$FL" ]; then
    echo
    echo "### The durable floor"
    echo
    echo "The baseline binary with \`--durable\` (examples/baseline.rs) does per event only what any"
    echo "exactly-once, durable meter must: a serde_json parse, a RocksDB lookup of the id, a RocksDB"
    echo "record of it in the write-ahead log (buffered: written from the request's task; fsync: group"
    echo "commit paced at 1 ms, as meterd's), a sum per contract. No API keys, registry, time windows,"
    echo "in-flight claims of ids (an id repeated within or across concurrent requests counts twice),"
    echo "decimals, quotas or metrics. Its rounds ($ROUNDS, alternating baseline, floor and meterd on"
    echo "each shape, order reversed every other round) ran after the latency rounds. If the floor"
    echo "misses a target, no design that keeps exactly-once durable events in RocksDB meets it here."
    echo
    echo "| shape | baseline | floor | meterd | floor / baseline | meterd / baseline | meterd / floor | target | server CPU µs per event: baseline; floor; meterd |"
    echo "|---|---|---|---|---|---|---|---|---|"
    for shape in T1 T2 T3; do
      case $shape in
        T1) b=fl-B64 f=fl-F64b mm=fl-M64b fld=3 bfld=3 what="single event, buffered, $C_T1 conns (req/s)" tgt="≥ 0.70" d=3 ;;
        T2) b=fl-B256 f=fl-F256f mm=fl-M256f fld=3 bfld=3 what="single event, fsync, $C_T2 conns (req/s)" tgt="≥ 0.50" d=3 ;;
        T3) b=fl-B64 f=fl-Fbatch mm=fl-Mbatch fld=4 bfld=3 what="1,000-event batches, fsync, $C_BATCH conns (events/s; ratios to the baseline's single-event req/s, $C_T1 conns)" tgt="≥ 15" d=2 ;;
      esac
      echo "| $shape: $what | $(mmm "$(col "$FL" "$b" "$bfld" | stats)") | $(mmm "$(col "$FL" "$f" "$fld" | stats)") | $(mmm "$(col "$FL" "$mm" "$fld" | stats)") | $(mmm "$(ratios "$FL" "$f" "$fld" "$b" "$bfld" | stats)" "$d") | $(mmm "$(ratios "$FL" "$mm" "$fld" "$b" "$bfld" | stats)" "$d") | $(mmm "$(ratios "$FL" "$mm" "$fld" "$f" "$fld" | stats)" 3) | $tgt | $(mmm "$(fl_cpu "$b")" 2); $(mmm "$(fl_cpu "$f")" 2); $(mmm "$(fl_cpu "$mm")" 2) |"
    done
  fi
}
