# Process helpers shared by benches/peers.sh and benches/fleet.sh (sourced, not run). The
# sourcing script defines say, READY_TIMEOUT_S and STOP_TIMEOUT_S first.
# shellcheck shell=bash

# alive PID: the process exists and is not a zombie waiting to be reaped.
alive() {
    local st
    st=$(sed 's/.*) //' "/proc/$1/stat" 2>/dev/null | cut -d' ' -f1) || return 1
    [ -n "$st" ] && [ "$st" != Z ]
}

stop_pid() {
    local pid=$1 i
    alive "$pid" || { wait "$pid" 2>/dev/null || true; return 0; }
    kill -TERM "$pid" 2>/dev/null || true
    for ((i = 0; i < STOP_TIMEOUT_S * 10; i++)); do
        alive "$pid" || break
        sleep 0.1
    done
    if alive "$pid"; then
        say "pid $pid did not exit ${STOP_TIMEOUT_S}s after SIGTERM; SIGKILL"
        kill -KILL "$pid" 2>/dev/null || true
    fi
    wait "$pid" 2>/dev/null || true
}

# free_port START: the first port from START up that nobody on 127.0.0.1 accepts on.
free_port() {
    local p=$1
    for ((; p < $1 + 200; p++)); do
        if ! (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then echo "$p"; return 0; fi
    done
    say "no free port from $1 to $(($1 + 199))"; return 1
}

# wait_ready PID URL LOG: poll URL until it answers, while PID lives; bounded by READY_TIMEOUT_S.
wait_ready() {
    local pid=$1 url=$2 log=$3 i
    for ((i = 0; i < READY_TIMEOUT_S * 10; i++)); do
        if ! kill -0 "$pid" 2>/dev/null; then
            say "server exited during start-up; last lines of $log:"; tail -n 20 "$log" >&2; return 1
        fi
        if curl -sf -m 2 -o /dev/null "$url"; then return 0; fi
        sleep 0.1
    done
    say "no answer from $url within ${READY_TIMEOUT_S}s; last lines of $log:"; tail -n 20 "$log" >&2
    return 1
}
