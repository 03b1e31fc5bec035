# shellcheck shell=bash
# Sourced by benches/run.sh: the report's commands, request shapes and peer setups.

report_commands() {
  echo
  echo "## Commands"
  echo
  echo '```sh'
  echo "bash benches/run.sh                      # this report"
  echo "$BUILD_CMD"
  echo "# servers: taskset -c $CORE_SRV; generators: taskset -c $CORE_GEN"
  echo "meterd serve --config <tmp>/meterd.toml  # durability fsync|buffered, flush_interval 1s, lateness 1h"
  echo "baseline 127.0.0.1:0                     # target/release/examples/baseline"
  echo "baseline 127.0.0.1:0 --durable buffered|fsync --data DIR   # the durable floor"
  echo "loadgen run --url URL --key KEY --conns $C_T1 --body single --warmup $WARMUP_SECONDS --duration $ROUND_SECONDS   # T1 (and B64)"
  echo "loadgen run --url URL --key KEY --conns $C_T2 --body single ...                                # T2 (and B256)"
  echo "loadgen run --url URL --key KEY --conns $C_BATCH --body batch --events 1000 [--contract-prefix bench-q] ... # T3/T4"
  echo "loadgen run --url URL --key KEY --conns $C_T2 --body single --rate ${T5_RATE:-R} --duration $LAT_SECONDS \\"
  echo "  --flush-pid PID --side-path /v1/contracts/bench-q0/balance --side-rate $SIDE_RATE --side-conns $SIDE_CONNS  # T5/T6"
  echo "${PG_CMD:-pgbench -n -M prepared -c $C_T2 -j 1 -T $ROUND_SECONDS -f event.sql}"
  echo "${REDIS_CMD:-redis-benchmark ... EVALSHA ...}"
  echo "valgrind --tool=callgrind meterd serve ...; callgrind_control -z PID; loadgen --requests N1; callgrind_control -d PID; loadgen --requests N2; callgrind_control -d PID"
  echo "$MICRO_CMD"
  echo '```'
  echo
  echo "Events are \`{\"id\":\"<run prefix>-<13-digit event number>\",\"contract\":\"bench-c<k>\",\"lever\":\"$LEVER\",\"value\":1}\`,"
  echo "k round robin over $CONTRACTS contracts, every id distinct; the baseline gets byte-identical requests"
  echo "(including the Authorization header). PostgreSQL runs \`max_connections=$((C_T2 + 20))\`, \`shared_buffers=256MB\`,"
  echo "\`synchronous_commit=on\`, \`fsync=on\`, defaults otherwise; each pgbench transaction is:"
  echo
  echo '```sql'
  if [ -f "$RES/event.sql" ]; then sed 's/\\\\/\\/' "$RES/event.sql"; fi
  echo '```'
  echo
  echo "Redis runs \`appendonly yes\`, \`appendfsync everysec\`, no RDB snapshots; each request is one"
  echo "EVALSHA of: \`if redis.call('SET', KEYS[1], '1', 'NX', 'EX', 3024000) then local t = redis.call('TIME');"
  echo "return redis.call('HINCRBY', KEYS[2], tostring(t[1] - t[1] % 60), 1) end return 0\`."
  echo
}
