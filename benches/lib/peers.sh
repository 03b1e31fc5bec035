# shellcheck shell=bash
# Sourced by benches/run.sh: the two peers of the throughput phase, PostgreSQL (T9) and
# Redis, each doing per event what meterd does (dedupe of the id, a per-minute counter),
# and their generators (pgbench, redis-benchmark), pinned like meterd's.

PG_PORT=""
REDIS_PORT=""
REDIS_SHA=""
start_peers() {
  log "starting PostgreSQL ($PGBIN) and Redis, pinned to CPU $CORE_SRV"
  PG_DATA=$TMP/pg/data
  install -d -m 700 "$TMP/pg"
  [ "$(id -u)" -eq 0 ] && chown postgres "$TMP/pg"
  as_pg "$PGBIN/initdb" -D "$PG_DATA" -U postgres --auth=trust -E UTF8 >"$RES/pg-initdb.log" 2>&1 ||
    die "initdb failed: $(tail -n 5 "$RES/pg-initdb.log")"
  PG_PORT=$(free_port)
  local opts="-c listen_addresses=127.0.0.1 -c port=$PG_PORT -c unix_socket_directories=$TMP/pg"
  opts+=" -c max_connections=$((C_T2 + 20)) -c shared_buffers=256MB -c synchronous_commit=on -c fsync=on"
  as_pg env LC_ALL=C "${PIN_SRV[@]}" "$PGBIN/pg_ctl" -D "$PG_DATA" -l "$TMP/pg/log" -w -t 60 \
    -o "$opts" start >"$RES/pg-start.log" 2>&1 || die "PostgreSQL did not start: $(tail -n 5 "$TMP/pg/log")"
  "$PGBIN/psql" -q -h 127.0.0.1 -p "$PG_PORT" -U postgres -v ON_ERROR_STOP=1 postgres <<'SQL' >/dev/null
CREATE TABLE dedupe (
  tenant text NOT NULL, id text NOT NULL, received_at timestamptz NOT NULL DEFAULT now(),
  PRIMARY KEY (tenant, id));
CREATE TABLE counters (
  tenant text NOT NULL, contract text NOT NULL, lever text NOT NULL, minute timestamptz NOT NULL,
  value numeric NOT NULL, PRIMARY KEY (tenant, contract, lever, minute));
SQL
  # Per event: one dedupe insert and one upsert of the (contract, lever, minute) counter,
  # in one statement (one transaction, one commit), only counted when the id is new.
  cat >"$TMP/pg/event.sql" <<EOF
\\set n random(1, 9000000000000000000)
\\set c random(0, $((CONTRACTS - 1)))
WITH ins AS (INSERT INTO dedupe (tenant, id) VALUES ('default', 'pg-' || :n) ON CONFLICT DO NOTHING RETURNING 1)
INSERT INTO counters (tenant, contract, lever, minute, value)
  SELECT 'default', 'bench-c' || :c, '$LEVER', date_trunc('minute', now()), 1 FROM ins
ON CONFLICT (tenant, contract, lever, minute) DO UPDATE SET value = counters.value + EXCLUDED.value;
EOF
  REDIS_PORT=$(free_port)
  mkdir -p "$TMP/redis"
  "${PIN_SRV[@]}" redis-server --bind 127.0.0.1 --port "$REDIS_PORT" --dir "$TMP/redis" --appendonly yes \
    --appendfsync everysec --save '' --protected-mode no --daemonize no >"$TMP/redis/log" 2>&1 &
  REDIS_PID=$!
  for _ in $(seq 1 100); do
    redis-cli -p "$REDIS_PORT" ping >/dev/null 2>&1 && break
    sleep 0.05
  done
  # SET NX of the id (with the dedupe retention as TTL), then HINCRBY of the counter's
  # minute field, atomically, only for a new id.
  REDIS_SHA=$(redis-cli -p "$REDIS_PORT" SCRIPT LOAD "if redis.call('SET', KEYS[1], '1', 'NX', 'EX', 3024000) then local t = redis.call('TIME'); return redis.call('HINCRBY', KEYS[2], tostring(t[1] - t[1] % 60), 1) end return 0")
  [ -n "$REDIS_SHA" ] || die "Redis script load failed"
}
stop_peers() {
  stop_pid "$REDIS_PID" TERM
  REDIS_PID=""
  as_pg "$PGBIN/pg_ctl" -D "$PG_DATA" -m fast stop >/dev/null 2>&1 || true
  PG_DATA=""
}
PG_CMD=""
REDIS_CMD=""
REDIS_N=20000
run_pg() { # round
  local out=$RES/$1-pg.txt
  # Opening 256 connections takes pgbench 1-3 s of its -T; its tps leaves that time out.
  local secs=$((ROUND_SECONDS + 3))
  PG_CMD="pgbench -n -M prepared -c $C_T2 -j 1 -T $secs -f event.sql (taskset -c $CORE_GEN)"
  pin_gen "$PGBIN/pgbench" -h 127.0.0.1 -p "$PG_PORT" -U postgres -n -M prepared -c "$C_T2" -j 1 \
    -T "$secs" -f "$TMP/pg/event.sql" postgres >"$out" 2>&1 || log "pgbench failed: $(tail -n 3 "$out")"
  local tps lat fails
  tps=$(sed -n '/^tps = /{s/^tps = \([0-9.]*\) .*/\1/p;q}' "$out")
  lat=$(sed -n '/^latency average = /{s/^latency average = \([0-9.]*\) ms/\1/p;q}' "$out")
  fails=$(sed -n '/^number of failed transactions: /{s/^number of failed transactions: \([0-9]*\).*/\1/p;q}' "$out")
  printf '%s\tpg%s\t%s\t%s\t%s\t\t\t\t%s\n' "$1" "$C_T2" "$tps" "$tps" "$lat" \
    "$(if [ -z "$tps" ]; then echo no-tps; elif [ "${fails:-0}" != 0 ]; then echo "failed=$fails"; else echo ok; fi)" >>"$TP"
}
run_redis() { # round
  local out=$RES/$1-redis.txt
  REDIS_CMD="redis-benchmark -c $C_T1 -n <rate x ROUND_SECONDS> -r 1000000000000 -q EVALSHA <sha> 2 ev:__rand_int__ cnt:default:bench-c0:$LEVER (taskset -c $CORE_GEN)"
  pin_gen redis-benchmark -h 127.0.0.1 -p "$REDIS_PORT" -c "$C_T1" -n "$REDIS_N" -r 1000000000000 -q \
    EVALSHA "$REDIS_SHA" 2 "ev:__rand_int__" "cnt:default:bench-c0:$LEVER" >"$out" 2>&1 ||
    log "redis-benchmark failed: $(tail -n 3 "$out")"
  local rps p50
  rps=$(tr '\r' '\n' <"$out" | sed -n 's/.*: \([0-9.]*\) requests per second.*/\1/p' | tail -n1)
  p50=$(tr '\r' '\n' <"$out" | sed -n 's/.*requests per second, p50=\([0-9.]*\) msec.*/\1/p' | tail -n1)
  printf '%s\tredis%s\t%s\t%s\t%s\t\t\t\t%s\n' "$1" "$C_T1" "$rps" "$rps" "$p50" \
    "$([ -n "$rps" ] && echo ok || echo no-result)" >>"$TP"
  [ -n "$rps" ] && REDIS_N=$(awk -v r="$rps" -v s="$ROUND_SECONDS" 'BEGIN { n = int(r * s); print (n < 1000) ? 1000 : n }')
}
