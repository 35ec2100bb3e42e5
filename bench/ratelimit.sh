#!/usr/bin/env bash
# bench/ratelimit.sh: wharf-ratelimit's figures, side by side in one run.
#
#  1. In-memory checks/s on one core (Limiter::check, GCRA arithmetic alone).
#  2. Redis-backed check latency p50/p99 (one in flight) and checks/s (64 in
#     flight) against a fresh redis-server on a free loopback port, beside
#     `redis-benchmark -t set -c 64` against the same server.
#  3. HTTP throughput of examples/ratelimit.rs (hyper + the layer) with the
#     limiter on vs off (rate set high so nothing is rejected: the cost of the
#     check itself), wrk -t2 -c64, alternating, best of 2.
#
# Usage: bench/ratelimit.sh [--no-http] [--duration N]
# Needs redis-server and redis-benchmark; wrk for part 3 (installed with apt-get
# if missing). Everything runs on loopback and stops by itself.
set -euo pipefail
cd "$(dirname "$0")/.."

HTTP=1
DURATION=5
while (($#)); do
  case "$1" in
    --no-http) HTTP=0 ;;
    --duration) DURATION="$2"; shift ;;
    *) echo "usage: bench/ratelimit.sh [--no-http] [--duration N]" >&2; exit 2 ;;
  esac
  shift
done

echo "--- wharf-ratelimit: in-memory and Redis (cargo bench, release)"
cargo bench -q -p wharf-ratelimit --bench ratelimit 2>/dev/null

((HTTP)) || exit 0
if ! command -v wrk >/dev/null; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk >/dev/null
fi
echo "--- HTTP: examples/ratelimit.rs, limiter on vs off (wrk -t2 -c64 -d${DURATION}s)"
cargo build -q --release --example ratelimit
target_dir="${CARGO_TARGET_DIR:-target}"
bin="$target_dir/release/examples/ratelimit"
pids=()
cleanup() { for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done; }
trap cleanup EXIT
port_on=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
port_off=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
PORT=$port_on RATE=1000000r/s "$bin" >/dev/null & pids+=($!)
PORT=$port_off RATELIMIT=off "$bin" >/dev/null & pids+=($!)
for port in "$port_on" "$port_off"; do
  for _ in $(seq 100); do curl -sf "http://127.0.0.1:$port/" >/dev/null && break; sleep 0.1; done
done
best_on=0; best_off=0
for round in 1 2; do
  for which in on off; do
    port=$([[ $which == on ]] && echo "$port_on" || echo "$port_off")
    rps=$(wrk -t2 -c64 -d"${DURATION}s" "http://127.0.0.1:$port/" | awk '/Requests\/sec/ {print $2}')
    echo "round $round limiter $which: $rps req/s"
    if [[ $which == on ]]; then best_on=$(python3 -c "print(max($best_on, $rps))"); else best_off=$(python3 -c "print(max($best_off, $rps))"); fi
  done
done
python3 -c "print(f'best: on {$best_on:.0f} req/s, off {$best_off:.0f} req/s, ratio on/off {$best_on/$best_off:.3f}')"
