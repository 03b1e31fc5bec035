# shellcheck shell=bash
# Sourced by benches/run.sh: medians and ranges over rounds, per-round ratios, and the
# number formatting and verdicts of the report.

# stats < values: "median min max" (nan when empty)
stats() {
  awk '/^[0-9.eE+-]+$/' | sort -g | awk '{ a[NR] = $1 }
    END { if (NR == 0) { print "nan nan nan"; exit }
          m = (NR % 2) ? a[(NR + 1) / 2] : (a[NR / 2] + a[NR / 2 + 1]) / 2
          print m, a[1], a[NR] }'
}
# col FILE NAME FIELD: the field of NAME's rows whose checks (field 9) passed.
col() { awk -F'\t' -v n="$2" -v f="$3" '$2 == n && $f != "" && $9 == "ok" { print $f }' "$1"; }
# ratios FILE NUM_NAME NUM_FIELD DEN_NAME DEN_FIELD: per-round num/den (rows whose checks
# passed; a config run twice in a round counts with the mean of its runs)
ratios() {
  awk -F'\t' -v a="$2" -v af="$3" -v b="$4" -v bf="$5" '
    $9 != "ok" { next }
    $2 == a && $af + 0 > 0 { x[$1] += $af; nx[$1]++ } $2 == b && $bf + 0 > 0 { y[$1] += $bf; ny[$1]++ }
    END { for (r in x) if (r in y) printf "%.4f\n", (x[r] / nx[r]) / (y[r] / ny[r]) }' "$1"
}
# awk function fmt(value, decimals): thousands separators; "n/a" for nan or empty; other
# text unchanged.
AWK_FMT='function fmt(v, d,   s, n, p, i, o, neg) {
  if (v == "nan" || v == "") return "n/a"
  if (v !~ /^-?[0-9.]+([eE][-+]?[0-9]+)?$/) return v
  s = sprintf("%." d "f", v); n = split(s, p, "."); i = p[1]; o = ""; neg = (substr(i, 1, 1) == "-")
  if (neg) i = substr(i, 2)
  while (length(i) > 3) { o = "," substr(i, length(i) - 2) o; i = substr(i, 1, length(i) - 3) }
  o = i o; if (neg) o = "-" o; if (n > 1) o = o "." p[2]; return o }'
fmt() { awk -v v="$1" -v d="${2:-0}" "$AWK_FMT"' BEGIN { print fmt(v, d) }'; } # number [decimals]
# tsv_table FILE SPEC...: Markdown rows; per column "s" (text, "-" if empty) or the decimals.
tsv_table() {
  local file=$1
  shift
  awk -F'\t' -v spec="$*" "$AWK_FMT"'
    BEGIN { n = split(spec, sp, " ") }
    { line = "|"
      for (i = 1; i <= n; i++) line = line " " (sp[i] == "s" ? ($i == "" ? "-" : $i) : fmt($i, sp[i])) " |"
      print line }' "$file"
}
mmm() { # "median min max" [decimals] -> "m [min–max]"
  local m lo hi
  read -r m lo hi <<<"$1"
  echo "$(fmt "$m" "${2:-0}") [$(fmt "$lo" "${2:-0}")–$(fmt "$hi" "${2:-0}")]"
}
verdict() { # value op target
  awk -v v="$1" -v o="$2" -v t="$3" 'BEGIN { if (v == "nan" || v == "") { print "n/a"; exit }
    ok = (o == ">=") ? (v >= t) : (v <= t); print ok ? "**pass**" : "**FAIL**" }'
}
