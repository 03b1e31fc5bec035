# shellcheck shell=bash
# Sourced by benches/run.sh: the report's cluster-mode section (the cluster phase).

report_cluster() {
  [ -s "$CL" ] || return 0
  local name label conns m1 p50 p99 ratio
  echo "### Cluster mode: 3 nodes against one"
  echo
  echo "A 3-node cluster from \`scripts/cluster.sh\` (3 NATS 2.15 servers with JetStream file"
  echo "storage and \`sync_interval: always\`, 3 meterd nodes, ${CLUSTER_PARTITIONS} partitions, streams of 3"
  echo "replicas) against a single-node meterd (\`durability = \"fsync\"\`), same generator and"
  echo "contracts, $ROUNDS alternating rounds of ${ROUND_SECONDS} s. The six cluster processes are not"
  echo "pinned: they share this machine's two CPUs with the generator; the single node is pinned to"
  echo "CPU $CORE_SRV. The cluster is driven through one node, as a load balancer would: requests for"
  echo "partitions another node owns are forwarded to it over NATS, and every acknowledgement waits for"
  echo "JetStream's quorum of fsynced replicas. Closed-loop rows saturate; the fixed-rate rows"
  echo "send $CLUSTER_RATE requests/s (latency corrected for coordinated omission). Median [min–max] over"
  echo "rounds."
  echo
  echo "| configuration | connections | events/s | p50 ms | p99 ms | cluster / single (events/s, per round) |"
  echo "|---|---|---|---|---|---|"
  for name in S1 K1 Sr Kr Sb Kb; do
    case $name in
      S1) label="single node, single events" conns=$C_T2 ;;
      K1) label="cluster, single events" conns=$C_T2 ;;
      Sr) label="single node, single events at $CLUSTER_RATE/s" conns=$C_T2 ;;
      Kr) label="cluster, single events at $CLUSTER_RATE/s" conns=$C_T2 ;;
      Sb) label="single node, ${BATCH_EVENTS}-event batches" conns=$C_BATCH ;;
      Kb) label="cluster, ${BATCH_EVENTS}-event batches" conns=$C_BATCH ;;
    esac
    m1=$(col "$CL" "$name" 4 | stats)
    p50=$(col "$CL" "$name" 5 | stats)
    p99=$(col "$CL" "$name" 6 | stats)
    ratio="-"
    case $name in
      K1) ratio=$(mmm "$(ratios "$CL" K1 4 S1 4 | stats)" 3) ;;
      Kr) ratio=$(mmm "$(ratios "$CL" Kr 4 Sr 4 | stats)" 3) ;;
      Kb) ratio=$(mmm "$(ratios "$CL" Kb 4 Sb 4 | stats)" 3) ;;
    esac
    echo "| $label | $conns | $(mmm "$m1") | $(mmm "$p50" 2) | $(mmm "$p99" 2) | $ratio |"
  done
  echo
  local failed
  failed=$(awk -F'\t' '$9 != "ok" { n++ } END { print n + 0 }' "$CL")
  [ "$failed" = 0 ] || echo "$failed run(s) failed their checks and are left out (raw: \`$CL\`)."
  if [ -s "$RES/cluster-publish.tsv" ]; then
    local count mean q50 q99
    read -r _ count mean q50 q99 < <(grep '^after' "$RES/cluster-publish.tsv")
    echo "**Publish-ack latency** (\`meterd_cluster_journal_publish_duration_seconds\`, all three nodes, the"
    echo "whole phase: one append per group commit, from publish to JetStream's acknowledgement):"
    echo "$(fmt "$count") appends, mean $mean ms, p50 $q50 ms, p99 $q99 ms (quantiles interpolated within"
    echo "histogram buckets)."
    echo
  fi
  if [ -s "$RES/cluster-takeover.txt" ]; then
    echo "**Takeover** after \`kill -9\` of a node (not the one the requests go to; \`lease_ttl\` 6 s,"
    echo "\`lease_renew\` 2 s): time from the kill until one request with an event for each of 64"
    echo "contracts spread over every partition is accepted whole again, i.e. until the victim's"
    echo "partitions answer again (\`benches/lib/takeover.py\`)."
    echo
    echo "| round | victim | contracts refused at least once | longest request s | seconds |"
    echo "|---|---|---|---|---|"
    grep '^TAKEOVER ' "$RES/cluster-takeover.txt" | while read -r line; do
      echo "| $(kv round "$line") | $(kv victim "$line") | $(kv affected "$line") | $(kv longest "$line") | $(kv seconds "$line") |"
    done
    echo
  fi
}
