#!/usr/bin/env bash
# bench/download.sh: the landing page with its upstream calls, beside /_status.
#
# Starts examples/download.rs (release) with two apps on loopback:
#   A: the offline default (pages + local document API + local service directory,
#      upstream calls in-process);
#   B: the same pages calling A's local APIs over HTTP (pooled keep-alive client:
#      GET /service/{id}, then GET /services/{id}/documents/{id}/check), as
#      `frontend` calls the real APIs.
# and drives, with wrk (-t2 -c32, keep-alive, HTTP/1.1), alternating rounds:
#   status   GET /_status on A (answered by wharf-http, no upstream call)
#   landing  GET /d/{service}/{document}?key=… on A (upstream calls in-process)
#   landing-http  the same path on B (two HTTP upstream calls per page, to A)
# Prints req/s (best of N rounds), p50 and p99 of that run, and each as a share
# of /_status. Loopback only; wrk, both apps and the local API share the CPUs.
#
# Usage: bench/download.sh [--duration N] [--rounds N] [--no-build]
set -euo pipefail
cd "$(dirname "$0")/.."

DURATION=5
ROUNDS=2
BUILD=1
while (($#)); do
  case "$1" in
    --duration) DURATION="$2"; shift ;;
    --rounds) ROUNDS="$2"; shift ;;
    --no-build) BUILD=0 ;;
    *) echo "usage: bench/download.sh [--duration N] [--rounds N] [--no-build]" >&2; exit 2 ;;
  esac
  shift
done
command -v wrk >/dev/null || { echo "bench/download.sh: wrk is needed (apt-get install wrk)" >&2; exit 1; }

TARGET_DIR="${CARGO_TARGET_DIR:-target}"
if ((BUILD)); then
  cargo build --release --example download >&2
fi
BIN="$TARGET_DIR/release/examples/download"

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
A="127.0.0.1:$(free_port)"
B="127.0.0.1:$(free_port)"
work="$(mktemp -d)"
"$BIN" "$A" "$B" >"$work/app.log" 2>&1 &
APP_PID=$!
trap 'kill "$APP_PID" 2>/dev/null || true; rm -rf "$work"' EXIT
for _ in $(seq 1 100); do
  curl -sf "http://$A/_status" >/dev/null && curl -sf "http://$B/_status" >/dev/null && break
  sleep 0.2
done
SAMPLE_PATH="$(grep -m1 'does not need' "$work/app.log" | sed -E 's#.*http://[^/]+(/d/[^ ]+).*#\1#')"
[[ -n "$SAMPLE_PATH" ]] || { echo "bench/download.sh: no sample URL in the log:" >&2; cat "$work/app.log" >&2; exit 1; }
for url in "http://$A$SAMPLE_PATH" "http://$B$SAMPLE_PATH"; do
  code="$(curl -s -o /dev/null -w '%{http_code}' "$url")"
  [[ "$code" == 200 ]] || { echo "bench/download.sh: $url answered $code" >&2; exit 1; }
done

declare -A URL=([status]="http://$A/_status" [landing]="http://$A$SAMPLE_PATH" [landing-http]="http://$B$SAMPLE_PATH")
ORDER=(status landing landing-http)
for name in "${ORDER[@]}"; do wrk -t2 -c32 -d1s "${URL[$name]}" >/dev/null; done

declare -A BEST_RPS BEST_P50 BEST_P99
for round in $(seq 1 "$ROUNDS"); do
  names=("${ORDER[@]}")
  ((round % 2 == 0)) && names=(landing-http landing status)
  for name in "${names[@]}"; do
    out="$(wrk --latency -t2 -c32 -d"${DURATION}s" "${URL[$name]}")"
    rps="$(awk '/Requests\/sec/ {print $2}' <<<"$out")"
    p50="$(awk '$1=="50%" {print $2}' <<<"$out")"
    p99="$(awk '$1=="99%" {print $2}' <<<"$out")"
    non2xx="$(awk '/Non-2xx/ {print $NF}' <<<"$out")"
    echo "round $round  $name  ${rps} req/s  p50 ${p50}  p99 ${p99}${non2xx:+  non-2xx: $non2xx}" >&2
    if [[ -z "${BEST_RPS[$name]:-}" ]] || awk -v a="$rps" -v b="${BEST_RPS[$name]}" 'BEGIN{exit !(a>b)}'; then
      BEST_RPS[$name]="$rps"; BEST_P50[$name]="$p50"; BEST_P99[$name]="$p99"
    fi
  done
done

printf '\n%-14s %12s %10s %10s %10s\n' target "req/s" p50 p99 "vs status"
for name in "${ORDER[@]}"; do
  share="$(awk -v a="${BEST_RPS[$name]}" -v b="${BEST_RPS[status]}" 'BEGIN{printf "%.0f%%", 100*a/b}')"
  printf '%-14s %12s %10s %10s %10s\n' "$name" "${BEST_RPS[$name]}" "${BEST_P50[$name]}" "${BEST_P99[$name]}" "$share"
done
echo "($(nproc) CPUs shared by wrk and the apps; wrk -t2 -c32, ${DURATION}s runs, best of $ROUNDS)"
