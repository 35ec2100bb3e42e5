#!/usr/bin/env bash
# bench/instructions.sh: user-space instructions per proxied request, edge
# beside nginx, counted by valgrind's callgrind.
#
# Throughput on a shared 2-core machine moves ±15 % from run to run, which
# hides any change smaller than that. Instruction counts do not move: the same
# binary serving the same requests executes the same instructions whatever
# else the machine does. This script runs each proxy as one process with one
# thread under callgrind (edge: `[supervisor] workers = 1, worker_threads = 1`;
# nginx: `master_process off`, one worker) in front of the same bare-hyper,
# opens 8 keep-alive TLS 1.3 connections with wrk, warms up, zeroes the
# counters, runs wrk for a fixed time, and divides the instructions executed
# since the zeroing by the requests wrk completed.
#
# What it does not count: the kernel (syscalls, TCP, loopback) and the time an
# instruction takes (cache misses, vector width). It is a check on user-space
# work, not a throughput figure; bench/run remains the throughput measure.
#
# Usage: bench/instructions.sh [--duration N] [--only edge|nginx]
# Environment: EDGE_BIN, HYPER_BIN (default target/release/{edge,bare-hyper}),
# NGINX (default nginx). Needs valgrind, wrk, openssl, curl. Loopback only.
set -euo pipefail
cd "$(dirname "$0")/.."

DURATION=10
ONLY=""
while (($#)); do
  case "$1" in
    --duration) DURATION="$2"; shift ;;
    --only) ONLY="$2"; shift ;;
    *) echo "usage: bench/instructions.sh [--duration N] [--only edge|nginx]" >&2; exit 2 ;;
  esac
  shift
done

TARGET="${CARGO_TARGET_DIR:-target}/release"
EDGE_BIN="${EDGE_BIN:-$TARGET/edge}"
HYPER_BIN="${HYPER_BIN:-$TARGET/bare-hyper}"
NGINX="${NGINX:-nginx}"
for tool in valgrind callgrind_control wrk openssl curl; do
  command -v "$tool" >/dev/null || { echo "bench/instructions.sh: $tool is not installed" >&2; exit 1; }
done
for bin in "$EDGE_BIN" "$HYPER_BIN"; do
  [[ -x "$bin" ]] || { echo "bench/instructions.sh: $bin is missing (cargo build --release -p wharf -p wharf-bench-hello)" >&2; exit 1; }
done

WORK="$(mktemp -d)"
PIDS=()
cleanup() {
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 \
  -keyout "$WORK/key.pem" -out "$WORK/cert.pem" -subj /CN=localhost \
  -addext subjectAltName=DNS:localhost,IP:127.0.0.1 2>/dev/null

UPSTREAM=$(free_port)
PORT="$UPSTREAM" "$HYPER_BIN" >"$WORK/hyper.log" 2>&1 &
PIDS+=($!)

# The process of the valgrind that serves: the one that is not a parent of
# another valgrind (edge's supervisor re-executes itself for the worker).
serving_pid() {
  local root=$1 pid=$1 child
  while child=$(pgrep -P "$pid" | head -1) && [[ -n "$child" ]]; do pid=$child; done
  echo "$pid"
}

measure() { # name port root-pid
  local name=$1 port=$2 root=$3 url="https://127.0.0.1:$2/_status" worker out requests file total
  for _ in $(seq 1 120); do
    curl -sk -o /dev/null "$url" && break
    sleep 0.5
  done
  curl -skf -o /dev/null "$url" || { echo "$name did not answer on $port" >&2; return 1; }
  worker=$(serving_pid "$root")
  wrk -t1 -c8 -d3s "$url" >/dev/null
  callgrind_control -z "$worker" >/dev/null 2>&1
  out=$(wrk -t1 -c8 -d"${DURATION}s" "$url")
  callgrind_control -d "$worker" >/dev/null 2>&1
  sleep 1
  requests=$(awk '/requests in/{print $1}' <<<"$out")
  file=$(ls -t "$WORK/cg.$name".*.* 2>/dev/null | head -1)
  total=$(callgrind_annotate "$file" 2>/dev/null | awk '/PROGRAM TOTALS/{gsub(",", "", $1); print $1}')
  printf '%-6s requests=%-7s instructions=%-12s per request=%s\n' "$name" "$requests" "$total" "$((total / requests))"
}

if [[ "$ONLY" != nginx ]]; then
  EDGE_PORT=$(free_port)
  cat >"$WORK/edge.toml" <<EOF
[[listen]]
address = "127.0.0.1:$EDGE_PORT"
ssl = true
[admin]
enabled = false
[http]
access_log = false
hsts = "max-age=63072000; includeSubDomains; preload"
x_frame_options = "DENY"
client_max_body_size = "10M"
[tls]
session_tickets = false
watch_interval = "0s"
[[upstream]]
name = "backend"
keepalive = 32
servers = [{ address = "127.0.0.1:$UPSTREAM" }]
[[server]]
server_name = ["localhost"]
default_server = true
ssl_certificate = "$WORK/cert.pem"
ssl_certificate_key = "$WORK/key.pem"
[[server.location]]
path = "/"
proxy_pass = "backend"
[supervisor]
workers = 1
worker_threads = 1
EOF
  RUST_LOG=warn valgrind --tool=callgrind --trace-children=yes \
    --callgrind-out-file="$WORK/cg.edge.%p" "$EDGE_BIN" --config "$WORK/edge.toml" >"$WORK/edge.log" 2>&1 &
  EDGE_ROOT=$!
  PIDS+=("$EDGE_ROOT")
  measure edge "$EDGE_PORT" "$EDGE_ROOT"
  kill "$EDGE_ROOT" 2>/dev/null || true
fi

if [[ "$ONLY" != edge ]]; then
  NGINX_PORT=$(free_port)
  mkdir -p "$WORK/nginx/logs"
  cat >"$WORK/nginx/nginx.conf" <<EOF
master_process off;
daemon off;
worker_processes 1;
pid $WORK/nginx/nginx.pid;
error_log $WORK/nginx/logs/error.log warn;
$( [[ $(id -u) == 0 ]] && echo "user root;" )
events { worker_connections 1024; }
http {
  access_log off;
  keepalive_requests 1000000;
  client_body_temp_path $WORK/nginx/cb; proxy_temp_path $WORK/nginx/px;
  fastcgi_temp_path $WORK/nginx/fc; uwsgi_temp_path $WORK/nginx/uw; scgi_temp_path $WORK/nginx/sc;
  map \$http_upgrade \$connection_upgrade { default upgrade; '' ''; }
  upstream backend { server 127.0.0.1:$UPSTREAM; keepalive 32; }
  ssl_protocols TLSv1.2 TLSv1.3;
  ssl_session_tickets off;
  server {
    listen 127.0.0.1:$NGINX_PORT ssl http2;
    ssl_certificate $WORK/cert.pem;
    ssl_certificate_key $WORK/key.pem;
    add_header X-Frame-Options DENY;
    add_header X-Content-Type-Options nosniff;
    add_header Strict-Transport-Security "max-age=63072000; includeSubDomains; preload" always;
    client_max_body_size 10M;
    location / {
      proxy_pass http://backend;
      proxy_http_version 1.1;
      proxy_set_header Upgrade \$http_upgrade;
      proxy_set_header Connection \$connection_upgrade;
      proxy_set_header Host \$host;
      proxy_set_header X-Real-IP \$remote_addr;
      proxy_set_header X-Forwarded-For \$proxy_add_x_forwarded_for;
      proxy_set_header X-Forwarded-Proto \$scheme;
    }
  }
}
EOF
  valgrind --tool=callgrind --callgrind-out-file="$WORK/cg.nginx.%p" \
    "$NGINX" -p "$WORK/nginx" -c "$WORK/nginx/nginx.conf" -e stderr >"$WORK/nginx.log" 2>&1 &
  NGINX_ROOT=$!
  PIDS+=("$NGINX_ROOT")
  measure nginx "$NGINX_PORT" "$NGINX_ROOT"
  kill "$NGINX_ROOT" 2>/dev/null || true
fi
