# shellcheck shell=bash
# Sourced by benches/run.sh: the report's micro-benchmarks (criterion medians).

report_micro() {
  local id el med shape
  if [ -s "$MICRO" ]; then
    echo "### Micro-benchmarks (criterion, median)"
    echo
    echo "\`$MICRO_CMD\`, pinned to CPU $CORE_SRV. \`parse/*\` parse the same bodies into meterd's \`Event\`"
    echo "four ways (see benches/README.md); per-element times divide by the events per body."
    echo
    echo "| bench | median | per element | elements/s |"
    echo "|---|---|---|---|"
    while IFS=$'\t' read -r id el med; do
      awk -v id="$id" -v el="$el" -v m="$med" "$AWK_FMT"'
        function t(ns) { return ns >= 1e6 ? sprintf("%.2f ms", ns / 1e6) : ns >= 1e3 ? sprintf("%.2f µs", ns / 1e3) : sprintf("%.1f ns", ns) }
        BEGIN { printf "| %s | %s | %s | %s |\n", id, t(m), t(m / el), fmt(el * 1e9 / m, 0) }'
    done <"$MICRO"
    echo
    echo "Fastest parser per shape:"
    echo
    for shape in single single_full batch_1000; do
      awk -F'\t' -v s="$shape" '$1 ~ "^parse/.*/" s "$" { split($1, p, "/"); v[p[2]] = $3 / $2 }
        END { best = ""; for (k in v) if (best == "" || v[k] < v[best]) best = k
              if (best == "") exit
              printf "- %s: **%s**, %.0f ns per event (serde_json_meterd %.0f ns, simd_json_tape %.0f ns, simd_json_value %.0f ns, serde_json_one_pass %.0f ns)\n",
                s, best, v[best], v["serde_json_meterd"], v["simd_json_tape"], v["simd_json_value"], v["serde_json_one_pass"] }' "$MICRO"
    done
    echo
  fi
}
