# shellcheck shell=bash
# Sourced by benches/run.sh: meterd's own view of a run, read from its /metrics.

# Server-side histograms: msnap NAME prints "sum count" of each; mdelta BEFORE AFTER prints
# their means over the interval.
HISTS="meterd_journal_fsync_duration_seconds meterd_journal_group_size_requests meterd_flush_duration_seconds"
msnap() {
  curl -fsS "http://${MET[$1]}/metrics" 2>/dev/null | awk -v names="$HISTS" '
    BEGIN { n = split(names, h, " ") }
    { for (i = 1; i <= n; i++) { if ($1 == h[i] "_sum") s[i] = $2; if ($1 == h[i] "_count") c[i] = $2 } }
    # Time inside meterd of POST /v1/events (from the request head parsed to the response
    # handed to hyper): requests within 2.5 ms and 5 ms, and all of them.
    $1 == "meterd_http_request_duration_seconds_bucket{route=\"events\",le=\"0.0025\"}" { b25 = $2 }
    $1 == "meterd_http_request_duration_seconds_bucket{route=\"events\",le=\"0.005\"}" { b5 = $2 }
    $1 == "meterd_http_request_duration_seconds_count{route=\"events\"}" { ball = $2 }
    END { for (i = 1; i <= n; i++) printf "%s %s ", s[i] + 0, c[i] + 0; printf "%s %s %s", b25 + 0, b5 + 0, ball + 0; print "" }' || true
}
mdelta() {
  awk -v a="$1" -v b="$2" 'BEGIN { split(a, x, " "); split(b, y, " ")
    df = y[2] - x[2]; dg = y[4] - x[4]; dl = y[6] - x[6]; dn = y[9] - x[9]
    f = (df > 0) ? sprintf("%.2f ms x%d", 1000 * (y[1] - x[1]) / df, df) : "-"
    g = (dg > 0) ? sprintf("%.1f req", (y[3] - x[3]) / dg) : "-"
    l = (dl > 0) ? sprintf("%.1f ms x%d", 1000 * (y[5] - x[5]) / dl, dl) : "-"
    printf "fsync %s, group %s, flush %s", f, g, l
    if (dn > 0) printf ", in meterd <= 2.5 ms %.2f%%, <= 5 ms %.2f%%", 100 * (y[7] - x[7]) / dn, 100 * (y[8] - x[8]) / dn }'
}
