"""What every module shares: where the checkout is, the scenario ids and
titles in the order they run, the fixed answers the peers give, BenchError and
the progress line."""
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
BENCH = ROOT / "bench"
SCHEMA = 2
T0 = time.monotonic()


# Scenario ids in the order they run (the priorities: the cheap,
# plain-HTTP ones first, the TLS ones after, Redis last, the whole production
# path at the end).
SCENARIOS = ["status", "accept", "metrics-overhead", "rss", "ready", "reload", "landing", "edge-tls", "handshakes",
             "resume", "idle", "ratelimit", "recipient"]
TITLES = {
    "status": "(1) GET /_status, plain HTTP/1.1 keep-alive",
    "accept": "(1b) frontend worker layout: shared socket vs SO_REUSEPORT per worker, worker count",
    "landing": "(2) Document landing page rendered by frontend",
    "edge-tls": "(3) TLS 1.3 reverse proxy: HTTP/1.1 keep-alive (wrk) and HTTP/2 (h2load)",
    "handshakes": "(4) New TLS handshakes per second (no session reuse)",
    "resume": "(4b) Returning clients: new TLS connection per request, session resumption allowed",
    "idle": "(5) Idle keep-alive TLS connections: memory",
    "ratelimit": "(6) Rate-limit check cost (bench/ratelimit.sh)",
    "rss": "(7) Resident memory per worker, idle and after load",
    "ready": "(8) Start to ready",
    "reload": "(9) Errors during reload under load",
    "metrics-overhead": "(10) Cost of instrumentation: frontend with metrics on vs off (and traces on)",
    "recipient": "(11) Production path: a recipient's walk, the seed stack against the wharf stack, same stub APIs",
}
# A fixed /_status answer shaped like frontend's, for nginx's `return 200`.
# Answered by edge and nginx themselves (no upstream) in scenario 3.
TLS_ONLY_PATH = "/_tls_only"
STATUS_BODY = '{"status":"ok","git_commit":"abcdef0","build_time":"2026-11-23T00:00:00Z","environment":"development"}'
MB = 1024 * 1024
# Scenario (4b)'s two ways to resume a TLS session, as (id, label): edge
# `session_cache = 20480, session_tickets = false` beside nginx's `ssl_session_cache
# shared:SSL:10m; ssl_session_tickets off;` (the seed's), and edge `session_cache
# = 0, session_tickets = true` beside nginx's `ssl_session_tickets on;
# ssl_session_cache off;`.
RESUME_VARIANTS = [("cache", "session cache"), ("tickets", "session tickets")]
# nginx writes scenario (4b)'s access logs (one `$ssl_session_reused` per
# connection) through a buffer flushed at least this often (seconds).
NGINX_LOG_FLUSH = 1


class BenchError(Exception):
    """A scenario cannot go on (a server did not start, a tool failed)."""


def progress(message):
    elapsed = int(time.monotonic() - T0)
    print(f"[{elapsed // 60:02d}:{elapsed % 60:02d}] {message}", file=sys.stderr, flush=True)


def repo_relative(path):
    """A path inside the checkout as relative to it, so results name no machine paths."""
    if not path:
        return path
    try:
        return str(Path(path).resolve().relative_to(ROOT))
    except ValueError:
        return str(path)


def mb(n):
    return None if n is None else round(n / MB, 2)
