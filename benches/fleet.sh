#!/usr/bin/env bash
# Fleet mode against its peer (issue 13, item 9): 2 pnsd nodes on one Redis (`--redis`) and 2
# nginx + nchan nodes on the same Redis (`nchan_redis_url`), in one run, each node with one
# thread/worker (2 nodes = the 2 cores of the benchmark host). The load generator
# (benches/loadgen, `--scenario fleet`) measures on each pair:
#   - userland bytes per parked poll (PSS of both nodes, idle -> --conns polls parked, spread
#     over the two nodes);
#   - fan-out of one publish (on node 1) to the --conns polls spread over both nodes;
#   - ingest msg/s through Redis (publishes on node 1, acks counted).
#
# Usage: benches/fleet.sh [LOADGEN OPTIONS...]   (e.g. --conns 15000 --rounds 5 --messages 100000)
# Environment: PNSD_BIN / LOADGEN_BIN (use these executables instead of building them),
#   CARGO_TARGET_DIR.
# Needs: redis-server, nginx with libnginx-mod-nchan, curl, jq (prints what is missing, exit 1).
# Results: TARGET/fleet/{pnsd,nchan}.json and .txt, TARGET/fleet/fleet.md (the table), server
# logs in TARGET/fleet/run-*/. Every process started is stopped on exit.
set -euo pipefail

readonly NOFILE_CAP=20000
readonly READY_TIMEOUT_S=60
readonly STOP_TIMEOUT_S=10

say() { echo "fleet: $*" >&2; }
die() { say "$*"; exit 1; }

repo=$(cd "$(dirname "$0")/.." && pwd)
cd "$repo"
orig_args=("$@")
loadgen_args=(--scenario fleet "$@")

nchan_module=""
for d in /usr/lib/nginx/modules /usr/share/nginx/modules; do
    [ -f "$d/ngx_nchan_module.so" ] && nchan_module="$d/ngx_nchan_module.so" && break
done
NGINX=$(command -v nginx 2>/dev/null || { [ -x /usr/sbin/nginx ] && echo /usr/sbin/nginx; } || true)
missing=()
command -v redis-server >/dev/null || missing+=(redis-server)
[ -n "$NGINX" ] || missing+=(nginx-light)
[ -n "$nchan_module" ] || missing+=(libnginx-mod-nchan)
command -v curl >/dev/null || missing+=(curl)
command -v jq >/dev/null || missing+=(jq)
[ ${#missing[@]} = 0 ] || die "missing Debian packages: ${missing[*]} (apt-get install -y ${missing[*]})"

hard=$(ulimit -Hn)
if [ "$hard" = unlimited ] || [ "$hard" -gt "$NOFILE_CAP" ]; then nofile=$NOFILE_CAP; else nofile=$hard; fi
ulimit -Sn "$nofile"

target_dir=${CARGO_TARGET_DIR:-$repo/target}
out="$target_dir/fleet"
mkdir -p "$out"
out=$(cd "$out" && pwd)
pnsd_bin=${PNSD_BIN:-}
if [ -z "$pnsd_bin" ]; then
    say "building pnsd (cargo build --release)"
    cargo build --release >&2
    pnsd_bin="$target_dir/release/pnsd"
fi
loadgen=${LOADGEN_BIN:-}
if [ -z "$loadgen" ]; then
    say "building the loadgen (cargo bench --bench loadgen --no-run)"
    loadgen=$(cargo bench --bench loadgen --no-run --message-format=json-render-diagnostics |
        jq -r 'select(.reason == "compiler-artifact" and .target.name == "loadgen"
                      and .executable != null) | .executable' | tail -n 1)
fi
[ -x "$pnsd_bin" ] || die "no pnsd executable ('$pnsd_bin')"
[ -x "$loadgen" ] || die "no loadgen executable ('$loadgen')"

run="$out/run-$(date -u +%Y%m%dT%H%M%SZ)"
mkdir -p "$run"
# alive, stop_pid, free_port, wait_ready
# shellcheck source=benches/procs.sh
. "$repo/benches/procs.sh"
started=()
stop_list() { local p; for p in "$@"; do stop_pid "$p"; done; }
trap 'stop_list "${started[@]+"${started[@]}"}"' EXIT
trap 'say "interrupted"; exit 130' INT TERM

# One Redis for both pairs (different key prefixes: pnsd's "pnsd:", nchan's own).
redis_port=$(free_port 16390)
redis-server --port "$redis_port" --bind 127.0.0.1 --save '' --appendonly no --dir "$run" \
    --logfile "$run/redis.log" --daemonize no >/dev/null 2>&1 &
redis_pid=$!; started+=("$redis_pid")
for ((i = 0; i < 100; i++)); do
    redis-cli -p "$redis_port" ping >/dev/null 2>&1 && break
    sleep 0.1
done
redis_url="redis://127.0.0.1:$redis_port"
say "redis-server $(redis-server --version | sed 's/.*v=\([^ ]*\).*/\1/') on $redis_url"

status=0
measure() { # NAME TARGET-ARGS...: runs the loadgen, result in $out/NAME.json
    local name=$1; shift
    local cmd=("$loadgen" "$@" --label "$name" --json "$out/$name.json" "${loadgen_args[@]}")
    say "$name: ${cmd[*]}"
    "${cmd[@]}" > >(tee "$out/$name.txt") 2>&1 || { say "$name: loadgen failed"; status=1; }
}

# ---- 2 pnsd nodes
pids=(); addrs=()
for n in 1 2; do
    port=$(free_port $((18080 + 10 * n)))
    sock=$(mktemp -d /tmp/fleet-pnsd.XXXXXX)/pnsd.sock
    "$pnsd_bin" --threads 1 --listen "127.0.0.1:$port" --publish-socket "$sock" --max-hold 120 \
        --redis "$redis_url" >"$run/pnsd$n.log" 2>&1 &
    pid=$!; started+=("$pid"); pids+=(--pid "$pid"); addrs+=(--addr "127.0.0.1:$port")
    wait_ready "$pid" "http://127.0.0.1:$port/pns/health" "$run/pnsd$n.log"
    [ "$n" = 1 ] && first_sock=$sock
done
measure pnsd --target pnsd "${addrs[@]}" --publish-socket "$first_sock" "${pids[@]}"
stop_list "${started[@]:1}"; started=("$redis_pid")

# ---- 2 nginx + nchan nodes
pids=(); addrs=()
for n in 1 2; do
    port=$(free_port $((18180 + 10 * n)))
    dir="$run/nchan$n"; mkdir -p "$dir"
    sed -e "s#@NCHAN_MODULE@#$nchan_module#g" -e "s#@RUNDIR@#$dir#g" -e "s#@PORT@#$port#g" \
        -e 's#^worker_processes 2;#worker_processes 1;#' \
        -e "s#^\( *\)nchan_message_timeout 600s;#\1nchan_message_timeout 600s;\n\1nchan_redis_url \"$redis_url\";\n\1nchan_use_redis on;#" \
        "$repo/benches/nchan/nginx.conf.template" >"$dir/nginx.conf"
    "$NGINX" -t -q -p "$dir" -c "$dir/nginx.conf" -e "$dir/error.log" >"$dir/nginx-t.log" 2>&1 ||
        { cat "$dir/nginx-t.log" >&2; die "nginx -t failed"; }
    "$NGINX" -p "$dir" -c "$dir/nginx.conf" -e "$dir/error.log" >"$dir/nginx.log" 2>&1 &
    pid=$!; started+=("$pid")
    wait_ready "$pid" "http://127.0.0.1:$port/health" "$dir/error.log"
    sleep 0.5
    mapfile -t w < <(pgrep -P "$pid" || true)
    started+=("${w[@]}"); pids+=(--pid "$pid"); for p in "${w[@]}"; do pids+=(--pid "$p"); done
    addrs+=(--addr "127.0.0.1:$port")
    [ "$n" = 1 ] && first_pub="http://127.0.0.1:$port/pub"
done
measure nchan --target nchan "${addrs[@]}" --publish-url "$first_pub" "${pids[@]}"
stop_list "${started[@]:1}"; started=("$redis_pid")

fig() { local v; v=$(jq -r "($2) // \"n/a\"" "$1" 2>/dev/null) || v="n/a"; echo "${v:-n/a}"; }
{
    echo "| 2 nodes on one Redis | parked | userland B/parked poll | fan-out p50 / p99 / max ms | ingest msg/s through Redis |"
    echo "|---|---:|---:|---:|---:|"
    for s in pnsd nchan; do
        f="$out/$s.json"
        r2='if . == null then null else (. * 100 | round / 100) end'
        echo "| $s | $(fig "$f" .conns) | $(fig "$f" '.bytes_per_parked | if . == null then null else round end')" \
             "| $(fig "$f" ".fanout_ms.p50 | $r2") / $(fig "$f" ".fanout_ms.p99 | $r2") / $(fig "$f" ".fanout_ms.max | $r2")" \
             "| $(fig "$f" '.ingest_msgs_per_s | if . == null then null else round end') |"
    done
    echo
    echo "Machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | sed 's/.*: //'), kernel $(uname -r)."
    echo "Date: $(date -u '+%Y-%m-%d %H:%M UTC'), pnsd $(git -C "$repo" rev-parse --short HEAD 2>/dev/null)," \
         "redis $(redis-server --version | sed 's/.*v=\([^ ]*\).*/\1/'), $("$NGINX" -v 2>&1 | sed 's/.*: //')" \
         "+ nchan $(dpkg-query -W -f '${Version}' libnginx-mod-nchan 2>/dev/null || echo '?')."
    echo "Command: benches/fleet.sh${orig_args[*]+" ${orig_args[*]}"}"
} >"$out/fleet.md"
cat "$out/fleet.md"
exit $status
