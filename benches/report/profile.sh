# shellcheck shell=bash
# Sourced by benches/run.sh: the report's callgrind profile (Ir per event, the top
# inclusive and self costs of each meterd run).

report_profile() {
  local kind
  if [ -s "$PROF" ]; then
    echo "### Profile (callgrind)"
    echo
    echo "User-space instructions (Ir) per event under callgrind, all threads of the server, from two"
    echo "windows of N1 and N2 requests after a warm-up (\`callgrind_control -z\`, then \`-d\` after each"
    echo "window): (I2 - I1) / (N2 - N1) / events per request. Single events over 8 connections,"
    echo "1,000-event batches over 4. Kernel work (syscalls, TCP, fsync) is not counted."
    echo
    echo "| run | N1 requests | I1 | N2 requests | I2 | events per request | Ir per event | checks |"
    echo "|---|---|---|---|---|---|---|---|"
    tsv_table "$PROF" s 0 0 0 0 0 0 s
    echo
    for kind in fsync buffered fsync-batch fsync-batch-quota; do
      [ -s "$RES/cg-$kind-inclusive.txt" ] || continue
      echo "Top-10 inclusive costs, meterd $kind, window N2 (\`callgrind_annotate --inclusive=yes\`;"
      echo "thread and tokio scheduler frames, which include everything, left out; % of all Ir):"
      echo
      echo '```'
      { grep -Ev "$WRAPPERS" "$RES/cg-$kind-inclusive.txt" || true; } | awk 'NR <= 10'
      echo '```'
      echo
      echo "Top-15 self costs, meterd $kind (\`callgrind_annotate\`; the same frames left out: the"
      echo "dump charges frames still open at the dump with their open calls):"
      echo
      echo '```'
      { grep -Ev "$WRAPPERS" "$RES/cg-$kind-self.txt" || true; } | awk 'NR <= 15'
      echo '```'
      echo
    done
  fi
}
