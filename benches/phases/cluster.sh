# shellcheck shell=bash
# Sourced by benches/run.sh: the cluster phase. A 3-node cluster from scripts/cluster.sh
# (3 NATS servers and 3 meterd nodes on this machine, CLUSTER_PARTITIONS partitions, not
# pinned: six processes share the two CPUs) against a single-node meterd (fsync, pinned
# to CORE_SRV as in the other phases), with the same generator and the same contracts:
# ROUNDS alternating rounds of single events (C_T2 connections) and 1,000-event batches
# (C_BATCH connections). The cluster is driven through one node, as a load balancer
# would: requests for partitions another node owns are forwarded to it. Then the
# journal's publish-ack latency from every node's histogram, and the takeover time
# after `kill -9` of a node, TAKEOVERS times (benches/lib/takeover.py).

# S/K: single node / cluster; 1: single events, closed loop; r: single events at a fixed
# CLUSTER_RATE requests/s (what a client sees at a load the cluster carries); b: batches.
# Answers may take seconds in the cluster's saturated runs: 30 s of grace for both.
CLUSTER_CONFIGS="S1 K1 Sr Kr Sb Kb"
cluster_config() { # round config
  local r=$1 c=$2 g=(--grace 30)
  case $c in
    S1) http_run "$r" "$c" single $C_T2 --body single "${g[@]}" ;;
    Sr) http_run "$r" "$c" single $C_T2 --body single --rate "$CLUSTER_RATE" "${g[@]}" ;;
    Sb) http_run "$r" "$c" single $C_BATCH --body batch --events $BATCH_EVENTS "${g[@]}" ;;
    K1) KEY=$CLUSTER_KEY http_run "$r" "$c" cluster $C_T2 --body single "${g[@]}" ;;
    Kr) KEY=$CLUSTER_KEY http_run "$r" "$c" cluster $C_T2 --body single --rate "$CLUSTER_RATE" "${g[@]}" ;;
    Kb) KEY=$CLUSTER_KEY http_run "$r" "$c" cluster $C_BATCH --body batch --events $BATCH_EVENTS "${g[@]}" ;;
  esac
}
# publish_latency: "count mean_ms p50_ms p99_ms" of meterd_cluster_journal_publish_duration_seconds
# over every node (buckets added up; quantiles interpolated within their bucket).
publish_latency() {
  local url
  for url in "$@"; do curl -fsS "$url/metrics" || true; done | python3 -c '
import sys
name = "meterd_cluster_journal_publish_duration_seconds"
buckets, total, count = {}, 0.0, 0.0
for line in sys.stdin:
    if line.startswith(name + "_bucket"):
        le = line.split("le=\"")[1].split("\"")[0]
        if le != "+Inf":
            buckets[float(le)] = buckets.get(float(le), 0.0) + float(line.rsplit(" ", 1)[1])
    elif line.startswith(name + "_sum"):
        total += float(line.rsplit(" ", 1)[1])
    elif line.startswith(name + "_count"):
        count += float(line.rsplit(" ", 1)[1])
def quantile(q):
    want, prev, lo = q * count, 0.0, 0.0
    for le in sorted(buckets):
        n = buckets[le]
        if count > 0 and n >= want:
            return "%.2f" % (1000 * (lo + (le - lo) * (want - prev) / max(n - prev, 1)))
        prev, lo = n, le
    return "-"
mean = "%.2f" % (1000 * total / count) if count else "-"
print(int(count), mean, quantile(0.5), quantile(0.99))
'
}
phase_cluster() {
  local dir=$TMP/cluster
  CLUSTER_DIR=$dir
  log "cluster: 3 NATS + 3 meterd (${CLUSTER_PARTITIONS} partitions) from scripts/cluster.sh"
  METERD=$METERD PARTITIONS=$CLUSTER_PARTITIONS bash "$REPO/scripts/cluster.sh" up "$dir" \
    >"$RES/cluster-up.txt" 2>&1 || die "scripts/cluster.sh up failed: $(tail -n 5 "$RES/cluster-up.txt")"
  local j=$dir/cluster.json
  py() { python3 -c "import json,sys; c=json.load(open(sys.argv[1])); $1" "$j"; }
  API[cluster]=$(py 'print([p for p in c["processes"] if p["name"]=="meterd-1"][0]["api_url"][7:])')
  MET[cluster]=$(py 'print([p for p in c["processes"] if p["name"]=="meterd-1"][0]["metrics_url"][7:])')
  PID[cluster]=$(py 'print([p for p in c["processes"] if p["name"]=="meterd-1"][0]["pid"])')
  CLUSTER_KEY=$(py 'print(c["keys"]["admin"])')
  local metrics_urls
  read -r -a metrics_urls <<<"$(py 'print(" ".join(p["metrics_url"] for p in c["processes"] if p["kind"]=="meterd"))')"
  KEY=$CLUSTER_KEY setup_meterd cluster bench-c "$CONTRACTS"
  start_meterd single fsync 1s 1h 127.0.0.1:0 127.0.0.1:0 "${PIN_SRV[@]}"
  setup_meterd single bench-c "$CONTRACTS"
  local before
  before=$(publish_latency "${metrics_urls[@]}")
  TP=$CL alternating_rounds cluster "$CLUSTER_CONFIGS" cluster_config
  local after
  after=$(publish_latency "${metrics_urls[@]}")
  printf 'before\t%s\nafter\t%s\n' "$before" "$after" | tr ' ' '\t' >"$RES/cluster-publish.tsv"
  log "cluster: takeover after kill -9 of a node, $TAKEOVERS times"
  python3 "$BENCH_DIR/lib/takeover.py" "$j" "$METERD" "$TAKEOVERS" "$LEVER" \
    >"$RES/cluster-takeover.txt" 2>&1 || log "takeover probe failed: $(tail -n 3 "$RES/cluster-takeover.txt")"
  stop_pid "${PID[single]}" TERM
  unset "PID[single]" "PID[cluster]"
  bash "$REPO/scripts/cluster.sh" down "$dir" >>"$RES/cluster-up.txt" 2>&1 || true
  CLUSTER_DIR=""
}
