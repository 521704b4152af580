#!/usr/bin/env bash
# Pictures of one benches/peers.sh run (issue 12), drawn with gnuplot from its results directory,
# so they can be redrawn without rerunning the benchmark.
#
# Usage: benches/charts.sh [DIR]              draw from DIR [${CARGO_TARGET_DIR:-target}/peers]
#        benches/charts.sh --record DIR LIST  write DIR/run-info.txt for a run of the servers in
#                                             LIST (comma-separated) starting now (peers.sh does)
# Reads DIR/run-info.txt (date, commit, machine and servers of the run: the pictures' titles)
# and DIR/<server>.json (loadgen --json) for each server it names; without run-info.txt, every
# <server>.json present, and the titles say the run's details were not recorded.
# Writes into DIR, next to its inputs:
#   parked-bytes.png   bar chart, userland bytes per parked poll, log scale, each bar labelled
#   parked-bytes.dat   its data: label, bytes (bar height, at least 1 for the log axis), text
#   fanout-cdf.png     CDF of per-subscriber fan-out latency (all rounds), log time axis; the
#                      legend gives p50/p99/max, dashed lines each server's client floor
#   fanout-<server>.dat  its data: latency ms, fraction of subscribers answered by then
#                      (from fanout_ms.latencies; only the p50/p99/max points for older results)
#   parked-bytes.gp, fanout-cdf.gp   the gnuplot scripts (cd DIR && gnuplot fanout-cdf.gp)
# Needs gnuplot (Debian gnuplot-nox) and jq. Exit status 0 when both pictures were drawn,
# 1 otherwise (a missing program is named with its package).
set -euo pipefail

say() { echo "charts: $*" >&2; }
die() { say "$*"; exit 1; }

# Every server peers.sh knows, in its order; the name in the pictures and its colour (kept the
# same in both pictures so a reader matches them at a glance).
readonly SERVERS="pnsd nchan jetty"
label_of() {
    case "$1" in pnsd) echo "pnsd" ;; nchan) echo "nginx + nchan" ;; jetty) echo "Jetty 9.4 async" ;; *) echo "$1" ;; esac
}
colour_of() {
    case "$1" in pnsd) echo "#1f5fa8" ;; nchan) echo "#2e9148" ;; jetty) echo "#d2691e" ;; *) echo "#666666" ;; esac
}
# colour_number S: the same colour as the number gnuplot's "lc rgb variable" reads from a column.
colour_number() { local c; c=$(colour_of "$1"); echo $((16#${c#\#})); }

# run_info DIR LIST: the run's date, commit (short, -dirty with uncommitted changes to tracked
# files), machine (CPU model, cores, memory, kernel) and servers, one key=value a line.
run_info() {
    local repo commit cpu mem_kb
    repo=$(cd "$(dirname "$0")/.." && pwd)
    if commit=$(git -C "$repo" rev-parse --short HEAD 2>/dev/null); then
        [ -z "$(git -C "$repo" status --porcelain --untracked-files=no 2>/dev/null)" ] || commit="$commit-dirty"
    else
        commit="(no commit)"
    fi
    cpu=$(grep -m1 'model name' /proc/cpuinfo | sed 's/.*: //; s/  */ /g')
    mem_kb=$(awk '/^MemTotal:/ { print $2 }' /proc/meminfo)
    echo "date=$(date -u '+%Y-%m-%d %H:%M UTC')"
    echo "commit=$commit"
    echo "cpu=${cpu:-unknown CPU}"
    echo "cores=$(nproc)"
    echo "memory=$(awk -v k="$mem_kb" 'BEGIN { printf "%.1f GiB", k / 1048576 }')"
    echo "kernel=$(uname -r)"
    echo "servers=${2//,/ }"
}

if [ "${1:-}" = --record ]; then
    [ $# -eq 3 ] || die "usage: $0 --record DIR SERVER,SERVER,..."
    run_info "$2" "$3" >"$2/run-info.txt"
    exit 0
fi
case "${1:-}" in -h|--help) sed -n '2,/^set -euo/p' "$0" | grep '^#' | sed 's/^# \{0,1\}//'; exit 0 ;; esac
[ $# -le 1 ] || die "usage: $0 [DIR]"
dir=${1:-${CARGO_TARGET_DIR:-$(cd "$(dirname "$0")/.." && pwd)/target}/peers}
[ -d "$dir" ] || die "no results directory $dir (run benches/peers.sh first)"
command -v gnuplot >/dev/null || die "missing: gnuplot (apt-get install gnuplot-nox)"
command -v jq >/dev/null || die "missing: jq (apt-get install jq)"

# ---------------------------------------------------------------------------- the run
declare -A info=()
if [ -f "$dir/run-info.txt" ]; then
    while IFS='=' read -r k v; do [ -z "$k" ] || info[$k]=$v; done <"$dir/run-info.txt"
    servers=${info[servers]:-$SERVERS}
    # gnuplot double-quoted strings: a backslash or a quote in /proc/cpuinfo must stay text.
    machine="${info[cpu]:-?}, ${info[cores]:-?} cores, ${info[memory]:-?}, Linux ${info[kernel]:-?}"
    subtitle="$machine | pnsd ${info[commit]:-?} | ${info[date]:-?}"
else
    say "no $dir/run-info.txt: the titles will say the run's machine, commit and date are unknown"
    servers=""
    for s in $SERVERS; do [ ! -f "$dir/$s.json" ] || servers="$servers $s"; done
    subtitle="machine, commit and date of this run not recorded (no run-info.txt)"
fi
# gp_text S: S escaped for a gnuplot double-quoted string (a quote or backslash stays text).
gp_text() { local s=${1//\\/\\\\}; printf '%s' "${s//\"/\\\"}"; }
[ -n "${servers// /}" ] || die "no server results (<server>.json) in $dir"

# json S FILTER: a figure of server S, empty when its result file or the figure is missing.
json() {
    [ -s "$dir/$1.json" ] || return 0
    jq -r "($2) // empty" "$dir/$1.json" 2>/dev/null || true
}
# The terminal: pngcairo (anti-aliased) when this gnuplot has it, else libgd's png.
terminal=png
if gnuplot -e 'set terminal pngcairo' 2>/dev/null; then terminal=pngcairo; fi
conns=""; rounds=""
for s in $servers; do
    conns=${conns:-$(json "$s" .conns)}
    rounds=${rounds:-$(json "$s" .fanout_ms.rounds)}
done
thousands() { LC_ALL=C printf '%s' "$1" | sed ':a; s/\([0-9]\)\([0-9]\{3\}\)\($\|,\)/\1,\2\3/; ta'; }

# ---------------------------------------------------------------------------- parked bytes
{
    echo "# server, userland bytes per parked poll (bar height; at least 1 for the log axis), bar text, colour (0xRRGGBB)"
    for s in $servers; do
        b=$(json "$s" '.bytes_per_parked | if . == null then null else round end')
        if [ -z "$b" ]; then
            echo "\"$(label_of "$s")\" 1 \"no result\" $(colour_number "$s")"
        else
            if [ "$b" -ge 1 ]; then text="$(thousands "$b") B"; h=$b; else text="$b B: off the log scale"; h=1; fi
            echo "\"$(label_of "$s")\" $h \"$text\" $(colour_number "$s")"
        fi
    done
} >"$dir/parked-bytes.dat"
cat >"$dir/parked-bytes.gp" <<EOF
# Drawn by benches/charts.sh from parked-bytes.dat; redraw with: gnuplot parked-bytes.gp
set terminal $terminal size 900,640 font "sans,12" noenhanced
set output "parked-bytes.png"
set title "Userland memory per parked poll, $(thousands "${conns:-?}") polls parked on one channel (lower is better)\n$(gp_text "$subtitle")"
stats "parked-bytes.dat" using 2 nooutput
set logscale y
set yrange [1:STATS_max * 12]
set format y "%.0s %cB"
set ylabel "bytes per parked poll (log scale)"
set xlabel "the server's PSS growth from idle to all polls parked, divided by the polls\n(userland only: the kernel's socket memory is not included)"
set xrange [-0.6:STATS_records - 0.4]
set xtics scale 0 font "sans,13"
set grid ytics mytics
unset key
set style fill solid 0.85 border rgb "#333333"
plot "parked-bytes.dat" using 0:2:(\$0 - 0.3):(\$0 + 0.3):(1):2:4:xtic(1) \\
        with boxxyerror lc rgb variable, \\
     "" using 0:2:3 with labels offset 0,1 font "sans,14"
EOF

# ---------------------------------------------------------------------------- fan-out CDF
plots=()
arrows=()
for s in $servers; do
    f="$dir/fanout-$s.dat"
    have=$(json "$s" '.fanout_ms.latencies | length')
    p50=$(json "$s" .fanout_ms.p50)
    p99=$(json "$s" .fanout_ms.p99)
    max=$(json "$s" .fanout_ms.max)
    floor=$(json "$s" .fanout_ms.client_floor)
    label=$(label_of "$s")
    c=$(colour_of "$s")
    if [ -z "$p50" ]; then
        say "$s: no fan-out result in $dir/$s.json; left out of fanout-cdf.png"
        echo "# no fan-out result for $s" >"$f"
        continue
    fi
    text=$(LC_ALL=C printf '%s: p50 %.1f / p99 %.1f / max %.1f ms' "$label" "$p50" "$p99" "$max")
    if [ "${have:-0}" -gt 0 ]; then
        # Starts at 0 so the first step rises from the axis; then one point per subscriber.
        { echo "# latency ms, fraction of $s's subscribers answered by then (all rounds)"
          jq -r '.fanout_ms.latencies as $l | ($l | length) as $n
                 | "\($l[0]) 0", (range(0; $n) | "\($l[.]) \((. + 1) * 1e6 / $n | round / 1e6)")' "$dir/$s.json"
        } >"$f"
        plots+=("\"fanout-$s.dat\" using 1:2 with steps lw 2.5 lc rgb \"$c\" title \"$(gp_text "$text")\"")
    else
        say "$s: $s.json has no fanout_ms.latencies (older loadgen); only its p50/p99/max are drawn"
        printf '# latency ms, fraction (percentiles only: this result has no per-subscriber latencies)\n%s 0.5\n%s 0.99\n%s 1\n' \
            "$p50" "$p99" "$max" >"$f"
        plots+=("\"fanout-$s.dat\" using 1:2 with linespoints lw 2 pt 7 lc rgb \"$c\" title \"$(gp_text "$text (percentiles only)")\"")
    fi
    if [ -n "$floor" ]; then
        arrows+=("set arrow from $floor, graph 0 to $floor, graph 1 nohead dt 2 lw 1.5 lc rgb \"$c\"")
    fi
done
if [ ${#plots[@]} -gt 0 ]; then
    if [ ${#arrows[@]} -gt 0 ]; then
        plots+=("NaN with lines dt 2 lw 1.5 lc rgb \"#555555\" title \"dashed: client floor (the load generator reading a round already queued)\"")
    fi
    {
        cat <<EOF
# Drawn by benches/charts.sh from fanout-*.dat; redraw with: gnuplot fanout-cdf.gp
set terminal $terminal size 1000,720 font "sans,12" noenhanced
set output "fanout-cdf.png"
set title "Fan-out latency per subscriber: one publish to $(thousands "${conns:-?}") parked polls, ${rounds:-?} rounds (left is better)\n$(gp_text "$subtitle")"
set logscale x
set xtics (0.1, 0.2, 0.5, 1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000)
set mxtics 10
set xlabel "ms from just before the publish to the subscriber's whole answer read (log scale)"
set ylabel "fraction of subscribers answered"
set yrange [0:1.02]
set ytics 0, 0.1, 1
set grid xtics ytics
set key outside below left Left reverse vertical maxrows 5 spacing 1.2
EOF
        printf '%s\n' "${arrows[@]+"${arrows[@]}"}"
        sep="plot "
        for p in "${plots[@]}"; do printf '%s%s' "$sep" "$p"; sep=$', \\\n     '; done
        echo
    } >"$dir/fanout-cdf.gp"
else
    rm -f "$dir/fanout-cdf.gp"
fi

# ---------------------------------------------------------------------------- draw
status=0
for g in parked-bytes fanout-cdf; do
    if [ ! -f "$dir/$g.gp" ]; then say "$g.png: no data to draw"; status=1; continue; fi
    rm -f "$dir/$g.png"
    if (cd "$dir" && gnuplot "$g.gp") && [ -s "$dir/$g.png" ]; then
        say "drew $dir/$g.png"
    else
        say "gnuplot failed on $dir/$g.gp"; status=1
    fi
done
exit $status
