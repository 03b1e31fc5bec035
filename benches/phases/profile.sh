# shellcheck shell=bash
# Sourced by benches/run.sh: the profile phase, callgrind instruction counts per event.
# Each server runs under callgrind; after a warm-up the counters are zeroed, then dumped
# after a window of N1 requests and again after N2 more, so that start-up and warm-up
# cancel out: (I2 - I1) / (N2 - N1) / events per request. Kernel work is not counted.

cg_count() { sed -n 's/^summary: //p' "$1" | head -n1; }
# cg_top FILE yes|no N: the N costliest functions (inclusive or self), source paths and
# object names cut off.
cg_top() {
  callgrind_annotate --inclusive="$2" --threshold=100 "$1" 2>/dev/null |
    sed -n '/file:function/,$p' | sed '1,2d' | awk 'NF' |
    sed -E 's#^( *[0-9,]+ \( *[0-9.]+%\)) +[^: ]+:#\1  #; s# \[[^]]*\]$##' |
    awk -v n="$3" 'NR <= n { print substr($0, 1, 160) }'
}
# Frames that wrap everything (threads, the tokio scheduler) and say nothing about cost
# (left out of the report's top lists).
WRAPPERS='clone$|thread_start|start_thread|call_once|__rust_begin_short_backtrace|tokio::runtime::(context|scheduler|task|blocking)|Scoped<T>::set|enter_runtime|BlockingTask'

# profile_one KIND SERVER BODY N1 N2: KIND names the result, SERVER is fsync, buffered or
# baseline, BODY single, batch (1,000 events) or batch-quota (the same on contracts with a
# hard monthly quota).
profile_one() {
  local kind=$1 server=$2 body=$3 n1=$4 n2=$5 name=cg-$1 url pid
  local cgdir=$TMP/$name
  mkdir -p "$cgdir"
  if [ "$server" = baseline ]; then
    valgrind --tool=callgrind --callgrind-out-file="$cgdir/cg.out" "$BASELINE" 127.0.0.1:0 >"$cgdir/log" 2>&1 &
    PID[$name]=$!
    for _ in $(seq 1 600); do
      API[$name]=$(sed -n 's|^baseline listening on http://||p' "$cgdir/log")
      [ -n "${API[$name]}" ] && break
      sleep 0.1
    done
  else
    start_meterd "$name" "$server" 1s 1h 127.0.0.1:0 127.0.0.1:0 \
      valgrind --tool=callgrind --callgrind-out-file="$cgdir/cg.out"
    setup_meterd "$name" bench-c "$CONTRACTS"
    [ "$body" = batch-quota ] && setup_meterd "$name" bench-q "$CONTRACTS" quota
  fi
  url="http://${API[$name]}"
  pid=${PID[$name]}
  local args=(--url "$url" --conns 8 --body single) per=1
  if [ "$body" = batch ]; then
    args=(--url "$url" --conns 4 --body batch --events 1000)
    per=1000
  elif [ "$body" = batch-quota ]; then
    args=(--url "$url" --conns 4 --body batch --events 1000 --contract-prefix bench-q)
    per=1000
  fi
  lg "$RES/$name-warm.txt" "${args[@]}" --requests $((200 / per + 2)) >/dev/null
  callgrind_control -z "$pid" >/dev/null 2>&1
  local l1 l2
  l1=$(lg "$RES/$name-n1.txt" "${args[@]}" --requests "$n1")
  callgrind_control -d "$pid" >/dev/null 2>&1
  l2=$(lg "$RES/$name-n2.txt" "${args[@]}" --requests "$n2")
  callgrind_control -d "$pid" >/dev/null 2>&1
  sleep 1
  local i1 i2
  i1=$(cg_count "$cgdir/cg.out.1")
  i2=$(cg_count "$cgdir/cg.out.2")
  printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$kind" "$n1" "$i1" "$n2" "$i2" "$per" \
    "$(awk -v a="$i1" -v b="$i2" -v n="$n1" -v m="$n2" -v e="$per" 'BEGIN { printf "%.0f", (b - a) / (m - n) / e }')" \
    "$(check_line "$l1" 0)/$(check_line "$l2" 0)" >>"$PROF"
  cg_top "$cgdir/cg.out.2" yes 80 >"$RES/cg-$kind-inclusive.txt"
  cg_top "$cgdir/cg.out.2" no 60 >"$RES/cg-$kind-self.txt"
  cp "$cgdir/cg.out.2" "$RES/callgrind.$kind.out"
  stop_pid "$pid" KILL
  unset "PID[$name]"
}
CG_B1=$(((CG_N1 + 99) / 100))
CG_B2=$(((CG_N2 + 99) / 100))
phase_profile() {
  log "callgrind: single events, $CG_N1 then $CG_N2 requests over 8 connections (fsync, buffered, baseline)"
  profile_one fsync fsync single "$CG_N1" "$CG_N2"
  profile_one buffered buffered single "$CG_N1" "$CG_N2"
  profile_one baseline baseline single "$CG_N1" "$CG_N2"
  log "callgrind: 1,000-event batches, $CG_B1 then $CG_B2 requests over 4 connections (fsync)"
  profile_one fsync-batch fsync batch "$CG_B1" "$CG_B2"
  log "callgrind: the same with a hard monthly quota on every contract (T4)"
  profile_one fsync-batch-quota fsync batch-quota "$CG_B1" "$CG_B2"
}
