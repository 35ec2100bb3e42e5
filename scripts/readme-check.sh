#!/usr/bin/env bash
# Runs README.md's "Run it" commands exactly as written, as a newcomer would
# type them, and checks what the README promises of them:
#
#   1. the first command (frontend) serves /_status on 127.0.0.1:7001, logs
#      the sample documents' URLs, and one of them opens its landing page;
#   2. the second (edge, in front of it) answers https://127.0.0.1:8443/_status
#      with 200 over HTTP/2 and proxies the sample page over TLS;
#   3. each stops on SIGTERM with exit status 0;
#   4. the README's test command is the one .ci/run runs.
#
# The commands are read from README.md itself, so a README whose commands
# drift from what works fails CI. Called by .ci/run; runnable by hand.
set -euo pipefail
cd "$(dirname "$0")/.."

readme=README.md
logs=$(mktemp -d)
declare -A pid_of=()
cleanup() {
    for pid in "${pid_of[@]}"; do kill -KILL "$pid" 2>/dev/null || true; done
    rm -rf "$logs"
}
trap cleanup EXIT

fail() {
    echo "readme-check: $*" >&2
    for log in "$logs"/*.log; do
        [ -e "$log" ] || continue
        echo "--- $log (last 40 lines)" >&2
        tail -n 40 "$log" >&2
    done
    exit 1
}

# The fenced ```sh blocks of one "## " section, one command a line.
section_commands() {
    awk -v want="$1" '
        /^## / { inside = ($0 == "## " want); next }
        inside && /^```sh$/ { block = 1; next }
        block && /^```$/ { block = 0; next }
        inside && block && NF { print }
    ' "$readme"
}

mapfile -t run_commands < <(section_commands "Run it")
mapfile -t test_commands < <(section_commands "Test it")
[ "${#run_commands[@]}" -eq 2 ] ||
    fail "README.md's \"Run it\" must hold two commands (frontend, then edge); found: ${run_commands[*]:-none}"
frontend_cmd=${run_commands[0]}
edge_cmd=${run_commands[1]}
[[ $frontend_cmd == *"--bin frontend"* ]] || fail "the first \"Run it\" command is not frontend's: $frontend_cmd"
[[ $edge_cmd == *"--bin edge"* ]] || fail "the second \"Run it\" command is not edge's: $edge_cmd"
[ "${test_commands[*]}" = "cargo test --workspace" ] ||
    fail "README.md's \"Test it\" says '${test_commands[*]}', .ci/run runs 'cargo test --workspace'"
grep -qx "cargo test --workspace" .ci/run || fail ".ci/run does not run the README's test command"

# Nothing of this machine's configuration may reach the commands: the README
# says "with no environment". Keep only what finds the toolchain.
clean_env=(env -i "PATH=$PATH" "HOME=${HOME:-/root}")
[ -n "${CARGO_HOME:-}" ] && clean_env+=("CARGO_HOME=$CARGO_HOME")
[ -n "${RUSTUP_HOME:-}" ] && clean_env+=("RUSTUP_HOME=$RUSTUP_HOME")

for port in 7001 8080 8443; do
    if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
        fail "port $port is already taken: the README's commands need it"
    fi
done

# Build first, in the same environment and profile the commands use, so the
# commands below mostly time the start-up (they may still relink, e.g. when
# the commit changed meanwhile: the waits allow for it).
echo "readme-check: building (cargo build --release --bin frontend --bin edge)"
"${clean_env[@]}" cargo build --release --bin frontend --bin edge

# start NAME COMMAND: runs COMMAND in its own process group; `cargo run`
# executes the binary in place of itself, so the pid is the server's.
start() {
    local name=$1 command=$2
    echo "readme-check: \$ $command"
    setsid "${clean_env[@]}" bash -c "exec $command" >"$logs/$name.log" 2>&1 </dev/null &
    pid_of[$name]=$!
}

# wait_for URL CURL-ARGS...: polls until URL answers 200 (15 min: a
# release relink with fat LTO takes minutes on 2 cores).
wait_for() {
    local url=$1
    shift
    for _ in $(seq 1 4500); do
        if [ "$(curl -s -o /dev/null -w '%{http_code}' --max-time 2 "$@" "$url")" = 200 ]; then
            return 0
        fi
        sleep 0.2
    done
    return 1
}

# stop NAME: SIGTERM, then the exit status must be 0 within 30 s.
stop() {
    local name=$1
    local pid=${pid_of[$name]}
    kill -TERM "$pid"
    for _ in $(seq 1 150); do
        if ! kill -0 "$pid" 2>/dev/null; then
            local status=0
            wait "$pid" || status=$?
            [ "$status" -eq 0 ] || fail "$name exited $status after SIGTERM"
            echo "readme-check: $name stopped cleanly on SIGTERM"
            return 0
        fi
        sleep 0.2
    done
    fail "$name did not exit within 30 s of SIGTERM"
}

start frontend "$frontend_cmd"
wait_for http://127.0.0.1:7001/_status || fail "frontend: no 200 from http://127.0.0.1:7001/_status"
status=$(curl -sS --max-time 5 http://127.0.0.1:7001/_status)
[[ $status == *'"environment":"development"'* ]] || fail "frontend: /_status is not development: $status"
echo "readme-check: frontend /_status: $status"

sample=""
for _ in $(seq 1 50); do
    sample=$(grep -o 'http://127\.0\.0\.1:7001/d/[^" ]*' "$logs/frontend.log" | head -n 1 || true)
    [ -n "$sample" ] && break
    sleep 0.1
done
[ -n "$sample" ] || fail "frontend: no sample document URL in the start-up log"
page=$(curl -sS --max-time 5 -w '\n%{http_code}' "$sample")
[[ $page == *$'\n200' ]] || fail "frontend: $sample answered ${page##*$'\n'}"
[[ $page == *"You have a file to download"* ]] || fail "frontend: $sample is not the landing page"
echo "readme-check: frontend sample landing page: 200 ($sample)"

# Development listens on loopback only: the kernel's listening sockets on
# 7001 are 127.0.0.1's alone (tests/e2e/frontend.rs checks the same).
listeners=$(ss -Hltn 'sport = :7001' | awk '{print $4}' | sort -u | tr '\n' ' ')
[ "$listeners" = "127.0.0.1:7001 " ] ||
    fail "frontend with no environment listens on '$listeners', expected 127.0.0.1:7001 only"
echo "readme-check: frontend listens on 127.0.0.1:7001 only"

start edge "$edge_cmd"
wait_for https://127.0.0.1:8443/_status -k || fail "edge: no 200 from https://127.0.0.1:8443/_status"
answer=$(curl -sk --max-time 5 -o /dev/null -w '%{http_code} %{http_version}' https://127.0.0.1:8443/_status)
[ "$answer" = "200 2" ] || fail "edge: https://127.0.0.1:8443/_status over HTTP/2 gave '$answer', expected '200 2'"
echo "readme-check: edge https://127.0.0.1:8443/_status: HTTP/2 200"
proxied=${sample/http:\/\/127.0.0.1:7001/https:\/\/127.0.0.1:8443}
page=$(curl -sk --max-time 5 -w '\n%{http_code}' "$proxied")
[[ $page == *$'\n200' && $page == *"You have a file to download"* ]] ||
    fail "edge: $proxied did not proxy the landing page (${page##*$'\n'})"
echo "readme-check: edge proxies the sample landing page over TLS"

stop edge
stop frontend
echo "readme-check: README.md's commands work as written"
