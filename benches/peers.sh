#!/usr/bin/env bash
# shellcheck disable=SC2317  # start_* are called as "start_$s", which shellcheck cannot follow
# Peers in one run (issue 4): pnsd, nginx + nchan and a Jetty 9.4 Servlet-3 async server, each
# started fresh, the same load-generator scenarios run against each, one markdown table at the end.
#
# Usage: benches/peers.sh [--quick] [--servers pnsd,nchan,jetty] [LOADGEN OPTIONS...]
#   --quick          small counts for a fast check (--conns 2000 --rounds 3 --repoll-clients 200
#                    --seconds 10 --messages 10000), each overridable by an explicit option
#   --servers LIST   comma-separated subset of pnsd,nchan,jetty, run in that order [all three]
#   other options    passed to the loadgen unchanged (--scenario, --conns, --rounds, --seconds,
#                    --repoll-clients, --messages); see benches/loadgen/README.md
# Environment: JAVA_OPTS (JVM options for the Jetty peer, default -Xmx2g), CARGO_TARGET_DIR;
#   PNSD_BIN / LOADGEN_BIN: use these executables instead of building them with cargo.
#
# What it does: installs nginx-light, libnginx-mod-nchan, libjetty9-java (and javac, curl, jq,
# procps, gnuplot-nox) with apt-get when missing, or prints exactly what is missing and exits 1; builds pnsd
# and the loadgen with cargo and the Jetty peer with benches/jetty/build.sh; raises the open-file
# soft limit to the hard limit capped at 20,000 (never beyond) for every server and the loadgen.
# Results: TARGET/peers/<server>.json (loadgen --json), TARGET/peers/<server>.txt (its output),
# TARGET/peers/peers.md (the table), run directories with server logs in TARGET/peers/run-*/,
# and the pictures drawn by benches/charts.sh (which redraws them from TARGET/peers alone):
# parked-bytes.png (userland bytes per parked poll) and fanout-cdf.png (per-subscriber fan-out
# latency), their data files (*.dat) and gnuplot scripts (*.gp), and run-info.txt (the date,
# commit and machine of the run, which the pictures' titles name).
# Exit status: 0 when every server ran every scenario, 1 otherwise. Every server started is
# stopped on exit, failure and interrupt included.
set -euo pipefail

# Open files allowed per process: the issue's per-process limit on the benchmark host.
readonly NOFILE_CAP=20000
# Seconds a server has to answer its health check after start (the JVM is the slowest, ~1 s).
readonly READY_TIMEOUT_S=60
# Seconds a server has to exit after SIGTERM before SIGKILL (pnsd drains within 5 s).
readonly STOP_TIMEOUT_S=10
# Unix socket paths are limited to 108 bytes (sun_path); stay clear of it.
readonly SUN_PATH_MAX=100

say() { echo "peers: $*" >&2; }
die() { say "$*"; exit 1; }

# ---------------------------------------------------------------------------- arguments
orig_args=("$@")
quick=0
servers="pnsd,nchan,jetty"
passthrough=()
while [ $# -gt 0 ]; do
    case "$1" in
        --quick) quick=1 ;;
        --servers) [ $# -ge 2 ] || die "--servers needs a value"; servers=$2; shift ;;
        --servers=*) servers=${1#--servers=} ;;
        -h|--help) sed -n '3,/^set -euo/p' "$0" | grep '^#' | sed 's/^# \{0,1\}//'; exit 0 ;;
        --target|--addr|--publish-socket|--publish-url|--pid|--json|--label|\
        --target=*|--addr=*|--publish-socket=*|--publish-url=*|--pid=*|--json=*|--label=*)
            die "$1 is set by this script per server; do not pass it" ;;
        *) passthrough+=("$1") ;;
    esac
    shift
done
for s in ${servers//,/ }; do
    case "$s" in pnsd|nchan|jetty) ;; *) die "unknown server '$s' in --servers (pnsd,nchan,jetty)" ;; esac
done

# has_opt NAME: whether the caller passed loadgen option NAME (as NAME VALUE or NAME=VALUE).
has_opt() {
    local a
    for a in "${passthrough[@]+"${passthrough[@]}"}"; do
        [ "$a" = "$1" ] || [ "${a%%=*}" = "$1" ] && return 0
    done
    return 1
}
loadgen_args=()
if ! has_opt --scenario; then loadgen_args+=(--scenario all); fi
if [ "$quick" = 1 ]; then
    has_opt --conns || loadgen_args+=(--conns 2000)
    has_opt --rounds || loadgen_args+=(--rounds 3)
    has_opt --repoll-clients || loadgen_args+=(--repoll-clients 200)
    has_opt --seconds || loadgen_args+=(--seconds 10)
    has_opt --messages || loadgen_args+=(--messages 10000)
fi
loadgen_args+=("${passthrough[@]+"${passthrough[@]}"}")

repo=$(cd "$(dirname "$0")/.." && pwd)
cd "$repo"

# ---------------------------------------------------------------------------- dependencies
nchan_module=""
find_nchan() {
    local d
    for d in /usr/lib/nginx/modules /usr/share/nginx/modules; do
        if [ -f "$d/ngx_nchan_module.so" ]; then nchan_module="$d/ngx_nchan_module.so"; return 0; fi
    done
    return 1
}
nginx_bin() { command -v nginx 2>/dev/null || { [ -x /usr/sbin/nginx ] && echo /usr/sbin/nginx; }; }
missing_pkgs() {
    local m=()
    [ -n "$(nginx_bin)" ] || m+=(nginx-light)
    find_nchan || m+=(libnginx-mod-nchan)
    [ -f /usr/share/java/jetty9-server.jar ] && [ -f /usr/share/java/servlet-api.jar ] || m+=(libjetty9-java)
    command -v javac >/dev/null || m+=(openjdk-17-jdk-headless)
    command -v curl >/dev/null || m+=(curl)
    command -v jq >/dev/null || m+=(jq)
    command -v pgrep >/dev/null || m+=(procps)
    command -v gnuplot >/dev/null || m+=(gnuplot-nox)
    echo "${m[@]+"${m[@]}"}"
}
need=$(missing_pkgs)
if [ -n "$need" ]; then
    say "missing Debian packages: $need"
    sudo_cmd=()
    if [ "$(id -u)" != 0 ]; then
        if command -v sudo >/dev/null && sudo -n true 2>/dev/null; then sudo_cmd=(sudo -n); else
            die "missing Debian packages: $need (run as root: apt-get update && apt-get install -y $need)"
        fi
    fi
    # shellcheck disable=SC2086
    if ! { "${sudo_cmd[@]+"${sudo_cmd[@]}"}" apt-get update &&
           "${sudo_cmd[@]+"${sudo_cmd[@]}"}" env DEBIAN_FRONTEND=noninteractive apt-get install -y $need; } >&2; then
        die "could not install: $need (apt-get update && apt-get install -y $need failed)"
    fi
    need=$(missing_pkgs)
    [ -z "$need" ] || die "still missing after apt-get install: $need"
fi
command -v cargo >/dev/null || die "missing: cargo (a Rust toolchain, https://rustup.rs)"
find_nchan
NGINX=$(nginx_bin)

# ---------------------------------------------------------------------------- limits
hard=$(ulimit -Hn)
if [ "$hard" = unlimited ] || [ "$hard" -gt "$NOFILE_CAP" ]; then nofile=$NOFILE_CAP; else nofile=$hard; fi
ulimit -Sn "$nofile" || die "cannot set the open-file soft limit to $nofile"
say "open-file limit for servers and loadgen: $(ulimit -Sn) (hard $(ulimit -Hn))"

# ---------------------------------------------------------------------------- build
target_dir=${CARGO_TARGET_DIR:-$repo/target}
out="$target_dir/peers"
mkdir -p "$out"
out=$(cd "$out" && pwd)

if [ -n "${PNSD_BIN:-}" ]; then
    pnsd_bin=$PNSD_BIN
else
    say "building pnsd (cargo build --release)"
    pnsd_bin=$(cargo build --release --message-format=json-render-diagnostics |
        jq -r 'select(.reason == "compiler-artifact" and .target.name == "pnsd"
                      and (.target.kind | index("bin")) and .executable != null) | .executable' |
        tail -n 1) || die "cargo build --release failed"
fi
if [ -z "$pnsd_bin" ] || [ ! -x "$pnsd_bin" ]; then die "no pnsd executable ('$pnsd_bin')"; fi

if [ -n "${LOADGEN_BIN:-}" ]; then
    loadgen=$LOADGEN_BIN
else
    say "building the loadgen (cargo bench --bench loadgen --no-run)"
    loadgen=$(cargo bench --bench loadgen --no-run --message-format=json-render-diagnostics |
        jq -r 'select(.reason == "compiler-artifact" and .target.name == "loadgen"
                      and .executable != null) | .executable' |
        tail -n 1) || die "cargo bench --bench loadgen --no-run failed"
fi
if [ -z "$loadgen" ] || [ ! -x "$loadgen" ]; then die "no loadgen executable ('$loadgen')"; fi

say "building the Jetty peer (benches/jetty/build.sh)"
"$repo/benches/jetty/build.sh" "$out/jetty-build" >&2 || die "benches/jetty/build.sh failed"
jetty_cp=$(cat "$out/jetty-build/classpath")

# ---------------------------------------------------------------------------- processes
run="$out/run-$(date -u +%Y%m%dT%H%M%SZ)"
mkdir -p "$run"
# The date, commit and machine of this run, for the pictures' titles.
"$repo/benches/charts.sh" --record "$out" "$servers" || die "benches/charts.sh --record failed"
# alive, stop_pid, free_port, wait_ready
# shellcheck source=benches/procs.sh
. "$repo/benches/procs.sh"
started=()   # every pid this script started (servers, nginx workers); stopped by the trap

# In start order: an nginx master before its workers, so it is not respawning them.
stop_all() {
    local p
    for p in "${started[@]+"${started[@]}"}"; do stop_pid "$p"; done
    started=()
}
loadgen_pid=""
trap '[ -z "$loadgen_pid" ] || stop_pid "$loadgen_pid"; stop_all' EXIT
trap 'say "interrupted"; exit 130' INT TERM



# Start functions set: pid (the process to stop), pids (to measure), target_args (loadgen).
start_pnsd() {
    local dir=$1 port sockdir
    port=$(free_port 18080) || return 1
    sockdir=$dir
    if [ ${#sockdir} -gt $((SUN_PATH_MAX - 10)) ]; then sockdir=$(mktemp -d /tmp/peers-pnsd.XXXXXX); fi
    "$pnsd_bin" --threads 2 --listen "127.0.0.1:$port" --publish-socket "$sockdir/pnsd.sock" \
        --max-hold 120 >"$dir/pnsd.log" 2>&1 &
    pid=$!; started+=("$pid"); pids=("$pid")
    wait_ready "$pid" "http://127.0.0.1:$port/pns/health" "$dir/pnsd.log" || return 1
    target_args=(--target pnsd --addr "127.0.0.1:$port" --publish-socket "$sockdir/pnsd.sock")
}
start_nchan() {
    local dir=$1 port w i
    port=$(free_port 18180) || return 1
    sed -e "s#@NCHAN_MODULE@#$nchan_module#g" -e "s#@RUNDIR@#$dir#g" -e "s#@PORT@#$port#g" \
        "$repo/benches/nchan/nginx.conf.template" >"$dir/nginx.conf"
    "$NGINX" -t -q -p "$dir" -c "$dir/nginx.conf" -e "$dir/error.log" >"$dir/nginx-t.log" 2>&1 || {
        say "nginx -t failed:"; cat "$dir/nginx-t.log" >&2; return 1; }
    "$NGINX" -p "$dir" -c "$dir/nginx.conf" -e "$dir/error.log" >"$dir/nginx.log" 2>&1 &
    pid=$!; started+=("$pid"); pids=("$pid")
    wait_ready "$pid" "http://127.0.0.1:$port/health" "$dir/error.log" || return 1
    # Two workers (worker_processes 2); measured with the master.
    for ((i = 0; i < 100; i++)); do
        mapfile -t w < <(pgrep -P "$pid" || true)
        [ ${#w[@]} -ge 2 ] && break
        sleep 0.1
    done
    [ ${#w[@]} -ge 2 ] || { say "nginx started ${#w[@]} workers, expected 2"; return 1; }
    started+=("${w[@]}"); pids+=("${w[@]}")
    target_args=(--target nchan --addr "127.0.0.1:$port" --publish-url "http://127.0.0.1:$port/pub")
}
start_jetty() {
    local dir=$1 port
    port=$(free_port 18280) || return 1
    # shellcheck disable=SC2086
    java ${JAVA_OPTS--Xmx2g} -cp "$jetty_cp" pnsbench.PollServer "$port" 127.0.0.1 \
        >"$dir/jetty.log" 2>&1 &
    pid=$!; started+=("$pid"); pids=("$pid")
    wait_ready "$pid" "http://127.0.0.1:$port/pns/health" "$dir/jetty.log" || return 1
    target_args=(--target jetty --addr "127.0.0.1:$port" --publish-url "http://127.0.0.1:$port/pub")
}

# ---------------------------------------------------------------------------- runs
status=0
ran=()
for s in ${servers//,/ }; do
    dir="$run/$s"
    mkdir -p "$dir"
    rm -f "$out/$s.json" "$out/$s.txt"
    pid=""; pids=(); target_args=()
    say "== $s: starting (logs in $dir)"
    if ! "start_$s" "$dir"; then
        say "$s: did not start"; status=1; stop_all; ran+=("$s"); continue
    fi
    pid_args=()
    for p in "${pids[@]}"; do pid_args+=(--pid "$p"); done
    cmd=("$loadgen" "${target_args[@]}" "${pid_args[@]}" --label "$s" --json "$out/$s.json" "${loadgen_args[@]}")
    say "$s: ${cmd[*]}"
    # In the background so that a SIGTERM to this script is handled at once (the trap stops it).
    "${cmd[@]}" > >(tee "$out/$s.txt") 2>&1 &
    loadgen_pid=$!
    rc=0; wait "$loadgen_pid" || rc=$?
    loadgen_pid=""
    if [ "$rc" != 0 ]; then say "$s: loadgen exited $rc (output in $out/$s.txt)"; status=1; fi
    kill -0 "$pid" 2>/dev/null || { say "$s: the server died during the run"; status=1; }
    say "$s: stopping"
    stop_all
    ran+=("$s")
done

# ---------------------------------------------------------------------------- pictures
pictures="parked-bytes.png, fanout-cdf.png"
if ! "$repo/benches/charts.sh" "$out"; then
    say "benches/charts.sh $out failed: no or partial pictures"; status=1
    pictures="failed, see the output of benches/charts.sh $out"
fi

# ---------------------------------------------------------------------------- table
# fig FILE JQ-EXPR: a figure from a result file, "n/a" when absent or null.
fig() {
    local v
    v=$(jq -r "($2) // \"n/a\"" "$1" 2>/dev/null) || v="n/a"
    echo "${v:-n/a}"
}
{
    echo "| server | parked | userland B/parked poll | fan-out p50 ms | p99 ms | max ms | client floor ms | server CPU ms/fan-out | re-poll resp/s | re-poll msg/s | server CPU us/resp | ingest msg/s | idle CPU s |"
    echo "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    for s in "${ran[@]}"; do
        f="$out/$s.json"
        if [ ! -s "$f" ]; then echo "| $s | failed, see $out/$s.txt and $run/$s | | | | | | | | | | | |"; continue; fi
        r2='if . == null then null else (. * 100 | round / 100) end'
        echo "| $s | $(fig "$f" .conns) | $(fig "$f" ".bytes_per_parked | if . == null then null else round end")" \
             "| $(fig "$f" ".fanout_ms.p50 | $r2") | $(fig "$f" ".fanout_ms.p99 | $r2") | $(fig "$f" ".fanout_ms.max | $r2")" \
             "| $(fig "$f" ".fanout_ms.client_floor | $r2") | $(fig "$f" ".fanout_ms.server_cpu_ms | if . == null then null else round end")" \
             "| $(fig "$f" ".repoll_per_s | if . == null then null else round end")" \
             "| $(fig "$f" ".repoll_msgs_per_s | if . == null then null else round end")" \
             "| $(fig "$f" "if .repoll_server_cpu_s == null or .repoll_per_s == null then null else (.repoll_server_cpu_s * 1e6 / (.repoll_per_s * .repoll_seconds) * 100 | round / 100) end")" \
             "| $(fig "$f" ".ingest_msgs_per_s | if . == null then null else round end")" \
             "| $(fig "$f" ".idle_cpu_s | $r2") over $(fig "$f" .idle_seconds) s |"
    done
    echo
    echo "Machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | sed 's/.*: //'), kernel $(uname -r)," \
         "open files per process $(ulimit -Sn)"
    echo
    echo '```'
    free -g
    echo '```'
    echo
    echo "Date: $(date -u '+%Y-%m-%d %H:%M UTC'). pnsd $(git -C "$repo" rev-parse --short HEAD 2>/dev/null || echo '(no commit)')," \
         "$("$NGINX" -v 2>&1 | sed 's/.*: //') + nchan $(dpkg-query -W -f '${Version}' libnginx-mod-nchan 2>/dev/null || echo '?')," \
         "Jetty $(dpkg-query -W -f '${Version}' libjetty9-java 2>/dev/null || echo '?') on $(java -version 2>&1 | head -n 1)."
    echo
    echo "Command: benches/peers.sh${orig_args[*]+" ${orig_args[*]}"}"
    echo "Pictures: $pictures (redraw with benches/charts.sh $out)"
    echo "Loadgen options: ${loadgen_args[*]}"
} >"$out/peers.md"
echo
cat "$out/peers.md"
say "results: $out/peers.md, $out/*.json, $out/*.png"
exit $status
