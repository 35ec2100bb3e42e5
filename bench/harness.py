#!/usr/bin/env python3
"""bench/harness.py: the scenarios behind bench/run.

bench/run builds the binaries and installs the peers, then runs this file; run
it directly only with the binaries in the environment (FRONTEND_BIN, HYPER_BIN,
EDGE_BIN, GUNICORN, NGINX). It starts every server itself on loopback, runs each
selected scenario with a bounded duration, stops every server it started, and
writes bench/results/<UTC date-time>.json plus (unless --no-docs) the results
section of docs/benchmarks.md and its SVG plots under docs/benchmarks/.

See bench/README.md for the scenarios, the method and the results format.
"""
import argparse
import http.client
import json
import math
import os
import platform
import re
import resource
import shlex
import shutil
import signal
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from urllib.parse import urlsplit

ROOT = Path(__file__).resolve().parents[1]


def repo_relative(path):
    """A path inside the checkout as relative to it, so results name no machine paths."""
    if not path:
        return path
    try:
        return str(Path(path).resolve().relative_to(ROOT))
    except ValueError:
        return str(path)
BENCH = ROOT / "bench"
SCHEMA = 2
T0 = time.monotonic()

# Scenario ids in the order they run (the issue's priorities: the cheap,
# plain-HTTP ones first, the TLS ones after, Redis last).
SCENARIOS = ["status", "accept", "metrics-overhead", "rss", "ready", "reload", "landing", "edge-tls", "handshakes",
             "resume", "idle", "ratelimit"]
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
# Every target the report lists (id, text, threshold, op, unit); one that a run
# did not measure is listed as "not measured".
TARGETS = [
    ("status-hyper", "frontend /_status ≥ 0.85× bare hyper", 0.85, ">=", "×"),
    ("status-gunicorn", "frontend /_status ≥ 20× gunicorn (eventlet, the seed's)", 20, ">=", "×"),
    ("accept-reuseport", "reuseport ≥ 1.1× shared socket (2 workers, keep-alive)", 1.1, ">=", "×"),
    ("tls-rps", "edge TLS keep-alive ≥ 1.1× nginx (HTTP/1.1)", 1.1, ">=", "×"),
    ("tls-p99", "edge TLS keep-alive p99 ≤ nginx p99", None, "<=", "ms"),
    ("handshakes-ecdsa", "edge handshakes/s ≥ nginx (ECDSA)", 1.0, ">=", "×"),
    ("handshakes-rsa", "edge handshakes/s ≥ nginx (RSA)", 1.0, ">=", "×"),
    ("resume-cache-ecdsa", "edge returning clients/s ≥ nginx (session cache, ECDSA)", 1.0, ">=", "×"),
    ("resume-cache-rsa", "edge returning clients/s ≥ nginx (session cache, RSA)", 1.0, ">=", "×"),
    ("resume-cache-rate", "edge resumes ≥ 99 % of the sessions returning clients offer (session cache)", 99, ">=",
     "%"),
    ("resume-tickets-ecdsa", "edge returning clients/s ≥ nginx (session tickets, ECDSA)", 1.0, ">=", "×"),
    ("resume-tickets-rsa", "edge returning clients/s ≥ nginx (session tickets, RSA)", 1.0, ">=", "×"),
    ("resume-tickets-rate", "edge resumes ≥ 99 % of the sessions returning clients offer (session tickets)", 99, ">=",
     "%"),
    ("idle", "edge memory holding idle TLS connections ≤ nginx (PSS, all processes)", None, "<=", "MB"),
    ("redis-p99", "Redis rate-limit check p99 ≤ 0.5 ms", 0.5, "<=", "ms"),
    ("rss", "≤ 12 MB RSS per frontend worker (after load)", 12, "<=", "MB"),
    ("ready", "frontend start to ready < 200 ms", 200, "<", "ms"),
    ("reload", "zero errors during reloads (frontend HUP and USR2, edge HUP)", 0, "==", "errors"),
    ("metrics-overhead", "frontend /_status with metrics ≥ 0.95× without (≤ 5 % cost)", 0.95, ">=", "×"),
]


class BenchError(Exception):
    """A scenario cannot go on (a server did not start, a tool failed)."""


def progress(message):
    elapsed = int(time.monotonic() - T0)
    print(f"[{elapsed // 60:02d}:{elapsed % 60:02d}] {message}", file=sys.stderr, flush=True)


# --- processes -----------------------------------------------------------------

RUNNING = []


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def process_table():
    """pid -> ppid for every process."""
    table = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", encoding="utf-8", errors="replace") as f:
                stat = f.read()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        table[int(entry)] = int(fields[1])
    return table


def descendants(pid):
    table = process_table()
    found, frontier = [], [pid]
    while frontier:
        parent = frontier.pop()
        for child, ppid in table.items():
            if ppid == parent:
                found.append(child)
                frontier.append(child)
    return found


def group_master(pgid):
    """The process of process group `pgid` whose parent is outside the group
    (after a binary upgrade, the new master; before, the original one)."""
    table, group = process_table(), set()
    for pid in table:
        try:
            with open(f"/proc/{pid}/stat", encoding="utf-8", errors="replace") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid:
            group.add(pid)
    roots = sorted(pid for pid in group if table.get(pid) not in group)
    return roots[0] if roots else pgid


def cpu_per_request(rows):
    """{name: {"user", "system", "total"}}: the median over each server's runs
    of its CPU microseconds per request."""
    out = {}
    for row in rows:
        runs = [x["cpu_us_per_request"] for x in row["runs"] if x.get("cpu_us_per_request")]
        if runs:
            user = statistics.median(x["user"] for x in runs)
            system = statistics.median(x["system"] for x in runs)
            out[row["name"]] = {"user": round(user, 2), "system": round(system, 2), "total": round(user + system, 2)}
    return out


def tcp_time_wait():
    """TCP sockets in TIME_WAIT on this machine (/proc/net/sockstat), or None."""
    try:
        with open("/proc/net/sockstat", encoding="ascii") as f:
            for line in f:
                if line.startswith("TCP:"):
                    fields = line.split()
                    return int(fields[fields.index("tw") + 1])
    except (OSError, ValueError, IndexError):
        pass
    return None


def cpu_budget(proxied, tls_only):
    """{name: µs per proxied request}: the proxy, its upstream and the load
    generator (medians over the runs), their sum (what one request costs the
    machine), and the proxy's cost of proxying: its CPU per proxied request
    less its CPU per request it answers itself (`tls_only`, same TLS, same
    client)."""
    def med(row, key):
        values = [x[key] for x in row["runs"] if key in x]
        return round(statistics.median(values), 2) if values else None
    floor = cpu_per_request(tls_only)
    out = {}
    for name, c in cpu_per_request(proxied).items():
        row = next(r for r in proxied if r["name"] == name)
        upstream, load = med(row, "upstream_cpu_us_per_request"), med(row, "load_generator_cpu_us_per_request")
        entry = {"proxy": c["total"], "upstream": upstream, "load_generator": load}
        if upstream is not None and load is not None:
            entry["machine"] = round(c["total"] + upstream + load, 2)
        if name in floor:
            entry["proxy_without_proxying"] = floor[name]["total"]
            entry["proxying_user"] = round(c["user"] - floor[name]["user"], 2)
            entry["proxying_system"] = round(c["system"] - floor[name]["system"], 2)
        out[name] = entry
    return out


def children(pid):
    return [child for child, ppid in process_table().items() if ppid == pid]


def memory_of(pid):
    """{"rss": bytes, "pss": bytes} of one process, or None once it has gone."""
    try:
        rss = pss = None
        with open(f"/proc/{pid}/status", encoding="utf-8") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    rss = int(line.split()[1]) * 1024
        try:
            with open(f"/proc/{pid}/smaps_rollup", encoding="utf-8") as f:
                for line in f:
                    if line.startswith("Pss:"):
                        pss = int(line.split()[1]) * 1024
        except OSError:
            pass
        return {"rss": rss, "pss": pss}
    except OSError:
        return None


def cpu_of(pid):
    """(user, system) CPU seconds one process has used, or None once it has gone."""
    try:
        with open(f"/proc/{pid}/stat", encoding="utf-8") as f:
            # Fields after the command (which may hold spaces), from field 3 on.
            fields = f.read().rsplit(")", 1)[1].split()
        tick = os.sysconf("SC_CLK_TCK")
        return int(fields[11]) / tick, int(fields[12]) / tick
    except (OSError, IndexError, ValueError):
        return None


# Configuration the servers would otherwise inherit from whoever runs the
# harness (a developer's shell): every server gets exactly the configuration
# set here.
INHERITED_CONFIG = re.compile(
    r"^(WHARF_.*|NOTIFY_ENVIRONMENT|PORT|WEB_CONCURRENCY|RUST_LOG|REDIS_.*|API_HOST_NAME|SECRET_KEY|"
    r"DANGEROUS_SALT|ADMIN_CLIENT_SECRET|DOCUMENT_DOWNLOAD_.*|HTTP_PROTOCOL|HTTP_SERVE_TIMEOUT_SECONDS|"
    r"GUNICORN_.*|BIND)$")


def server_env(extra=None):
    env = {k: v for k, v in os.environ.items() if not INHERITED_CONFIG.match(k)}
    env.update(extra or {})
    return env


class Server:
    """One server process (and whatever it spawns), in its own session."""

    def __init__(self, name, argv, port, env=None, scheme="http", path="/_status", cwd=None):
        self.name, self.argv, self.port = name, argv, port
        self.env = server_env(env)
        self.scheme, self.path, self.cwd = scheme, path, cwd or ROOT
        self.proc = None
        self.log_path = None
        self.ready_s = None

    def start(self, tmp, pin=None):
        self.log_path = tmp / f"{self.name}.log"
        log = open(self.log_path, "wb")
        argv = (["taskset", "-c", pin] if pin else []) + self.argv
        self.started = time.monotonic()
        self.proc = subprocess.Popen(
            argv, env=self.env, cwd=self.cwd, stdout=log, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL, start_new_session=True,
        )
        log.close()
        RUNNING.append(self)
        return self

    @property
    def pid(self):
        return self.proc.pid

    def url(self, path=None):
        return f"{self.scheme}://127.0.0.1:{self.port}{path or self.path}"

    def alive(self):
        return self.proc is not None and self.proc.poll() is None

    def log_text(self):
        try:
            return self.log_path.read_text(errors="replace")
        except (OSError, AttributeError):
            return ""

    def log_tail(self, lines=15):
        return "\n".join(self.log_text().splitlines()[-lines:])

    def probe(self, path=None, timeout=2.0):
        """(status, headers, body) of one GET, or None when it fails; for
        Redis, (200, {}, b"+PONG") when it answers PING."""
        if self.scheme == "redis":
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=timeout) as sock:
                    sock.sendall(b"PING\r\n")
                    answer = sock.recv(64)
                return (200, {}, answer) if answer.startswith(b"+PONG") else None
            except OSError:
                return None
        return http_get(self.url(path), timeout)

    def wait_ready(self, timeout=30.0):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            answer = self.probe(timeout=1.0)
            if answer and 200 <= answer[0] < 300:
                self.ready_s = time.monotonic() - self.started
                return answer
            if not self.alive():
                raise BenchError(f"{self.name} exited (status {self.proc.returncode}) before answering "
                                 f"{self.url()}; its output:\n{self.log_tail()}")
            time.sleep(0.05)
        raise BenchError(f"{self.name} did not answer {self.url()} within {timeout:.0f}s:\n{self.log_tail()}")

    def memory(self):
        """Per process of the tree: [{"pid", "role", "rss", "pss"}]."""
        out = []
        for pid, role in [(self.pid, "main")] + [(p, "child") for p in descendants(self.pid)]:
            m = memory_of(pid)
            if m:
                out.append({"pid": pid, "role": role, **m})
        return out

    def cpu(self):
        """(user, system) CPU seconds used by every process of the tree."""
        user = system = 0.0
        for pid in [self.pid] + descendants(self.pid):
            used = cpu_of(pid)
            if used:
                user, system = user + used[0], system + used[1]
        return user, system

    def signal(self, sig):
        os.kill(self.pid, sig)

    def stop(self):
        if self.proc is None:
            return
        for sig, wait in ((signal.SIGTERM, 5.0), (signal.SIGKILL, 5.0)):
            if self.proc.poll() is None:
                try:
                    os.killpg(self.pid, sig)
                except ProcessLookupError:
                    pass
                try:
                    self.proc.wait(timeout=wait)
                except subprocess.TimeoutExpired:
                    continue
        # Anything left in the session (a worker that outlived its master).
        try:
            os.killpg(self.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        if self in RUNNING:
            RUNNING.remove(self)


def stop_all():
    for server in list(RUNNING):
        server.stop()


def http_get(url, timeout=2.0, headers=None):
    parts = urlsplit(url)
    if parts.scheme == "https":
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        conn = http.client.HTTPSConnection(parts.hostname, parts.port, timeout=timeout, context=ctx)
    else:
        conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=timeout)
    try:
        conn.request("GET", parts.path + (f"?{parts.query}" if parts.query else ""),
                     headers={"Host": "localhost", **(headers or {})})
        response = conn.getresponse()
        body = response.read()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, body
    except (OSError, http.client.HTTPException, ssl.SSLError):
        return None
    finally:
        conn.close()


# --- load generators -------------------------------------------------------------

UNIT_MS = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3, "h": 3600e3}


def to_ms(token):
    m = re.fullmatch(r"([0-9]*\.?[0-9]+)(us|ms|s|m|h)", token)
    if not m:
        raise BenchError(f"unrecognised wrk time {token!r}")
    return round(float(m.group(1)) * UNIT_MS[m.group(2)], 4)


def parse_wrk(text):
    m = re.search(r"^Requests/sec:\s+([0-9.]+)", text, re.M)
    if not m:
        raise BenchError(f"no Requests/sec in wrk output:\n{text}")
    run = {"rps": float(m.group(1)), "latency_ms": {}}
    for p, t in re.findall(r"^\s+(50|75|90|99)(?:\.0+)?%\s+(\S+)\s*$", text, re.M):
        run["latency_ms"][f"p{p}"] = to_ms(t)
    m = re.search(r"^\s+Latency\s+(\S+)\s+(\S+)\s+(\S+)", text, re.M)
    if m:
        run["latency_ms"]["avg"] = to_ms(m.group(1))
        run["latency_ms"]["max"] = to_ms(m.group(3))
    m = re.search(r"^\s+(\d+) requests in ([0-9.]+\w+)", text, re.M)
    run["requests"] = int(m.group(1)) if m else None
    m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text)
    errors = dict(zip(("connect", "read", "write", "timeout"), map(int, m.groups()))) if m else \
        {"connect": 0, "read": 0, "write": 0, "timeout": 0}
    m = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", text)
    errors["non_2xx"] = int(m.group(1)) if m else 0
    run["errors"] = errors
    run["errors_total"] = sum(errors.values())
    return run


def percentiles(samples_ms):
    if not samples_ms:
        return {}
    s = sorted(samples_ms)

    def pick(q):
        return round(s[min(len(s) - 1, max(0, math.ceil(q * len(s)) - 1))], 4)

    return {"p50": pick(0.50), "p75": pick(0.75), "p90": pick(0.90), "p99": pick(0.99),
            "avg": round(statistics.fmean(s), 4), "max": round(s[-1], 4)}


class Load:
    """The load generators, configured once per run."""

    def __init__(self, settings):
        self.s = settings

    def client_prefix(self):
        return ["taskset", "-c", self.s.client_cpus] if self.s.client_cpus else []

    def wrk_argv(self, url, duration, connections=None, headers=()):
        argv = self.client_prefix() + [
            "wrk", "--latency", f"-t{self.s.wrk_threads}", f"-c{connections or self.s.connections}",
            f"-d{duration}s", "--timeout", "5s",
        ]
        for h in headers:
            argv += ["-H", h]
        return argv + [url]

    def wrk(self, url, duration, connections=None, headers=()):
        argv = self.wrk_argv(url, duration, connections, headers)
        try:
            out = subprocess.run(argv, capture_output=True, text=True, timeout=duration + 60)
        except subprocess.TimeoutExpired as e:
            raise BenchError(f"wrk did not finish: {shlex.join(argv)}") from e
        if out.returncode != 0:
            raise BenchError(f"wrk failed ({shlex.join(argv)}):\n{out.stdout}{out.stderr}")
        run = parse_wrk(out.stdout)
        run["tool"] = "wrk"
        return run

    def h2load(self, url, duration, tmp):
        log = tmp / "h2load-requests.log"
        log.unlink(missing_ok=True)
        argv = self.client_prefix() + [
            "h2load", f"-t{self.s.wrk_threads}", f"-c{self.s.h2_clients}", f"-m{self.s.h2_streams}",
            f"-D{duration}", f"--log-file={log}", url,
        ]
        try:
            out = subprocess.run(argv, capture_output=True, text=True, timeout=duration + 60)
        except subprocess.TimeoutExpired as e:
            raise BenchError(f"h2load did not finish: {shlex.join(argv)}") from e
        text = out.stdout
        m = re.search(r"finished in ([0-9.]+)(s|ms), ([0-9.]+) req/s", text)
        if out.returncode != 0 or not m:
            raise BenchError(f"h2load failed ({shlex.join(argv)}):\n{text}{out.stderr}")
        run = {"tool": "h2load", "rps": float(m.group(3))}
        m = re.search(r"requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, (\d+) failed, "
                      r"(\d+) errored, (\d+) timeout", text)
        if m:
            run["requests"] = int(m.group(4))
            run["errors"] = {"failed": int(m.group(5)), "errored": int(m.group(6)), "timeout": int(m.group(7))}
        m = re.search(r"status codes: (\d+) 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx", text)
        if m:
            run.setdefault("errors", {})["non_2xx"] = int(m.group(3)) + int(m.group(4))
        run["errors_total"] = sum(run.get("errors", {}).values())
        samples = []
        try:
            with open(log, encoding="utf-8") as f:
                for line in f:
                    cols = line.split("\t")
                    if len(cols) >= 3:
                        samples.append(int(cols[2]) / 1000.0)
        except OSError:
            pass
        run["latency_ms"] = percentiles(samples)
        log.unlink(missing_ok=True)
        m = re.search(r"Application protocol: (\S+)", text)
        run["protocol"] = m.group(1) if m else None
        return run

    def python(self, url, duration, connections=None):
        """A tiny keep-alive load loop (one thread per connection): the smoke
        test's load generator, present wherever python3 is."""
        connections = connections or self.s.connections
        parts = urlsplit(url)
        stop_at = time.monotonic() + duration
        lock = threading.Lock()
        samples, errors = [], {"connect": 0, "read": 0, "write": 0, "timeout": 0, "non_2xx": 0}

        def worker():
            conn, local = None, []
            while time.monotonic() < stop_at:
                try:
                    if conn is None:
                        conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=5)
                    started = time.perf_counter()
                    conn.request("GET", parts.path)
                    response = conn.getresponse()
                    response.read()
                    local.append((time.perf_counter() - started) * 1e3)
                    if not 200 <= response.status < 400:
                        with lock:
                            errors["non_2xx"] += 1
                    if response.will_close:
                        conn.close()
                        conn = None
                except (OSError, http.client.HTTPException) as e:
                    with lock:
                        errors["timeout" if isinstance(e, TimeoutError) else "read"] += 1
                    if conn is not None:
                        conn.close()
                    conn = None
            if conn is not None:
                conn.close()
            with lock:
                samples.extend(local)

        started = time.monotonic()
        threads = [threading.Thread(target=worker, daemon=True) for _ in range(connections)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(duration + 10)
        elapsed = time.monotonic() - started
        return {"tool": "python-load-loop", "rps": round(len(samples) / elapsed, 1), "requests": len(samples),
                "latency_ms": percentiles(samples), "errors": errors, "errors_total": sum(errors.values())}

    def http(self, url, duration, connections=None, headers=()):
        if self.s.load_tool == "python":
            return self.python(url, duration, connections)
        return self.wrk(url, duration, connections, headers)


# --- the harness -------------------------------------------------------------------

class Harness:
    def __init__(self, settings, tmp):
        self.s = settings
        self.tmp = tmp
        self.load = Load(settings)
        self.servers = {}
        self.certs = None
        self.results = {}
        self.targets = []
        self.warnings = []
        self.notes = {}

    # -- servers, started on demand and kept for the run --

    def have(self, name):
        """Whether the binary or peer behind `name` is available."""
        s = self.s
        return {
            "bare-hyper": bool(s.hyper_bin),
            "frontend": bool(s.frontend_bin),
            "gunicorn-eventlet": bool(s.gunicorn),
            "gunicorn-sync": bool(s.gunicorn),
            "nginx": bool(s.nginx),
            "edge-ecdsa": bool(s.edge_bin),
            "edge-hs-ecdsa": bool(s.edge_bin),
            "edge-hs-rsa": bool(s.edge_bin),
            **{f"edge-{v}-{k}": bool(s.edge_bin) for v, _ in RESUME_VARIANTS for k in ("ecdsa", "rsa")},
            "frontend-metrics-off": bool(s.frontend_bin),
            "frontend-traces-on": bool(s.frontend_bin),
        }[name]

    def server(self, name):
        if name in self.servers and self.servers[name].alive():
            return self.servers[name]
        if name in self.servers:
            raise BenchError(f"{name} has exited:\n{self.servers[name].log_tail()}")
        builders = {
            "bare-hyper": self.make_bare_hyper,
            "frontend": self.make_frontend,
            "gunicorn-eventlet": lambda: self.make_gunicorn("eventlet"),
            "gunicorn-sync": lambda: self.make_gunicorn("sync"),
            "nginx": self.make_nginx,
            "edge-ecdsa": lambda: self.make_edge("ecdsa"),
            "edge-hs-ecdsa": lambda: self.make_edge("ecdsa", resumption=False, name="edge-hs-ecdsa"),
            "edge-hs-rsa": lambda: self.make_edge("rsa", resumption=False, name="edge-hs-rsa"),
            "edge-cache-ecdsa": lambda: self.make_edge("ecdsa", name="edge-cache-ecdsa"),
            "edge-cache-rsa": lambda: self.make_edge("rsa", name="edge-cache-rsa"),
            "edge-tickets-ecdsa": lambda: self.make_edge("ecdsa", resumption=False, tickets=True,
                                                         name="edge-tickets-ecdsa"),
            "edge-tickets-rsa": lambda: self.make_edge("rsa", resumption=False, tickets=True,
                                                       name="edge-tickets-rsa"),
            "frontend-metrics-off": lambda: self.make_frontend("frontend-metrics-off", {"WHARF_METRICS": "false"}),
            "frontend-traces-on": lambda: self.make_frontend("frontend-traces-on", {
                "WHARF_TRACING": "otlp", "OTEL_TRACES_SAMPLER": "always_on",
                "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{self.otlp_sink().port}",
            }),
        }
        progress(f"starting {name}")
        server = builders[name]().start(self.tmp, self.s.server_cpus)
        self.servers[name] = server
        server.wait_ready(self.s.ready_timeout)
        return server

    def servers_available(self, names, scenario):
        out = []
        for name in names:
            if self.have(name):
                out.append(name)
            else:
                self.note(scenario, f"{name}: not run ({self.missing_reason(name)})")
        return out

    def missing_reason(self, name):
        return {
            "bare-hyper": "no HYPER_BIN",
            "frontend": "no FRONTEND_BIN",
            "gunicorn-eventlet": "not in --smoke" if self.s.smoke else "gunicorn not installed (bench/.venv)",
            "gunicorn-sync": "not in --smoke" if self.s.smoke else "gunicorn not installed (bench/.venv)",
            "nginx": "not in --smoke" if self.s.smoke else "nginx not installed",
            "edge-ecdsa": "no EDGE_BIN",
            "edge-hs-ecdsa": "no EDGE_BIN",
            "edge-hs-rsa": "no EDGE_BIN",
            **{f"edge-{v}-{k}": "no EDGE_BIN" for v, _ in RESUME_VARIANTS for k in ("ecdsa", "rsa")},
            "frontend-metrics-off": "no FRONTEND_BIN",
            "frontend-traces-on": "no FRONTEND_BIN",
        }[name]

    def note(self, scenario, text):
        self.notes.setdefault(scenario, []).append(text)

    def make_bare_hyper(self, port=None):
        port = port or free_port()
        return Server("bare-hyper", [self.s.hyper_bin], port, {"PORT": str(port)})

    def frontend_env(self, port, admin=None):
        env = {
            "PORT": str(port), "NOTIFY_ENVIRONMENT": "development", "WHARF_BIND_ADDRESS": "127.0.0.1",
            "WHARF_LOG_FORMAT": "json", "RUST_LOG": "info", "WHARF_ACCESS_LOG": "false",
            "WHARF_DOWNLOAD_LOCAL_DIR": str(self.tmp / f"frontend-local-{port}"),
        }
        if admin:
            env["WHARF_ADMIN_ADDRESS"] = f"127.0.0.1:{admin}"
        env.update(self.frontend_ratelimit_env())
        return env

    def frontend_ratelimit_env(self):
        """Every request of a run comes from 127.0.0.1, so frontend's per-IP
        document rate limit (10 r/s, burst 20 by default) would answer almost
        all landing-page requests with 429. The limiter stays on (its check is
        part of the cost measured) with a rate no run reaches. Only set when
        the binary knows the variables (an unknown WHARF_ variable is fatal)."""
        if not hasattr(self, "_ratelimit_env"):
            try:
                known = subprocess.run([self.s.frontend_bin, "config"], capture_output=True, text=True,
                                       timeout=10, env=server_env({"NOTIFY_ENVIRONMENT": "development"})).stdout
            except (OSError, subprocess.TimeoutExpired):
                known = ""  # not frontend (the noise-floor run puts bare-hyper in its slot)
            env = {}
            for zone in ("DOCUMENT", "CONFIRM"):
                if f"WHARF_RATELIMIT_{zone}_RATE" in known:
                    env[f"WHARF_RATELIMIT_{zone}_RATE"] = "1000000r/s"
                if f"WHARF_RATELIMIT_{zone}_BURST" in known:
                    env[f"WHARF_RATELIMIT_{zone}_BURST"] = "1000000"
            self._ratelimit_env = env
        return self._ratelimit_env

    def make_frontend(self, name="frontend", extra=None):
        port, admin = free_port(), free_port()
        server = Server(name, [self.s.frontend_bin, "serve"], port, {**self.frontend_env(port, admin), **(extra or {})})
        server.admin = admin
        return server

    def make_redis(self):
        port = free_port()
        return Server("redis", ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                                "--appendonly", "no"], port, scheme="redis")

    def make_gunicorn(self, kind, port=None):
        port = port or free_port()
        return Server(
            f"gunicorn-{kind}",
            [self.s.gunicorn, "-c", str(BENCH / "peers" / f"gunicorn_{kind}.py"), "--chdir", str(BENCH / "peers"),
             "status_app:application"],
            port, {"BIND": f"127.0.0.1:{port}"},
        )

    def ensure_certs(self):
        if self.certs:
            return self.certs
        certs = {}
        for kind, newkey in (("ecdsa", ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1"]),
                             ("rsa", ["-newkey", "rsa:2048"])):
            cert, key = self.tmp / f"{kind}.pem", self.tmp / f"{kind}.key"
            out = subprocess.run(
                ["openssl", "req", "-x509", *newkey, "-nodes", "-keyout", str(key), "-out", str(cert),
                 "-days", "2", "-subj", "/CN=localhost",
                 "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"],
                capture_output=True, text=True,
            )
            if out.returncode != 0:
                raise BenchError(f"openssl could not make the {kind} certificate:\n{out.stderr}")
            certs[kind] = (cert, key)
        self.certs = certs
        return certs

    def make_nginx(self):
        """One nginx with every listener the scenarios use: plain `return 200`
        /_status, and the seed's TLS reverse proxy (ECDSA and RSA certificates
        on two ports) in front of bare-hyper; the same proxy without session
        resumption (`hs-`, scenario 4), and with the session cache (`cache-`)
        or session tickets only (`tickets-`), each logging
        `$ssl_session_reused` (scenario 4b)."""
        certs = self.ensure_certs() if self.have("bare-hyper") else None
        prefix = self.tmp / "nginx"
        (prefix / "logs").mkdir(parents=True, exist_ok=True)
        plain = free_port()
        conf = [
            "worker_processes auto;",
            "worker_rlimit_nofile 40000;",
            f"pid {prefix}/nginx.pid;",
            f"error_log {prefix}/logs/error.log warn;",
        ]
        if os.getuid() == 0:
            conf.append("user root;")
        conf += [
            "events { worker_connections 30000; }",
            "http {",
            "  access_log off;",
            # nginx's default (1000) ends every connection after 1000 requests, HTTP/2
            # ones with a GOAWAY; h2load does not reconnect, so its clients would stop
            # and cap nginx at clients × 1000 / duration. edge has no such limit.
            "  keepalive_requests 1000000;",
            *(f"  {d}_temp_path {prefix}/{d};" for d in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")),
            "  server {",
            f"    listen 127.0.0.1:{plain};",
            "    location = /_status {",
            "      default_type application/json;",
            f"      return 200 '{STATUS_BODY}';",
            "    }",
            "  }",
        ]
        tls_ports = {}
        if certs:
            hyper = self.server("bare-hyper")
            conf += [
                "  map $http_upgrade $connection_upgrade { default upgrade; '' ''; }",
                "  upstream backend {",
                f"    server 127.0.0.1:{hyper.port};",
                "    keepalive 32;",
                "  }",
                "  ssl_protocols TLSv1.2 TLSv1.3;",
                "  ssl_ciphers ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256:"
                "ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-RSA-AES256-GCM-SHA384;",
                "  ssl_prefer_server_ciphers off;",
                "  ssl_session_cache shared:SSL:10m;",
                "  ssl_session_timeout 1d;",
                "  ssl_session_tickets off;",
                # Scenario (4b): one character per connection, `r` (resumed) or `.`.
                "  log_format resumed '$ssl_session_reused';",
            ]
            # Per listener: its session settings (the http block's by default).
            sessions = {
                "": [],
                "hs-": ["ssl_session_cache off;", "ssl_session_tickets off;"],
                # The http block's shared cache, tickets off: counted, not changed.
                "cache-": [],
                # nginx's ticket keys (OpenSSL's, made before the fork) are the same in every worker.
                "tickets-": ["ssl_session_tickets on;", "ssl_session_cache off;"],
            }
            for kind, cert_kind, prefix_ in [(f"{p}{k}", k, p) for p in sessions for k in certs]:
                cert, key = certs[cert_kind]
                port = free_port()
                tls_ports[kind] = port
                logged = prefix_ in ("cache-", "tickets-")
                conf += [
                    "  server {",
                    f"    listen 127.0.0.1:{port} ssl http2;",
                    "    server_name localhost;",
                    *(f"    {d}" for d in sessions[prefix_]),
                    *([f"    access_log {prefix}/logs/{kind}.log resumed buffer=64k flush={NGINX_LOG_FLUSH}s;"]
                      if logged else []),
                    f"    ssl_certificate {cert};",
                    f"    ssl_certificate_key {key};",
                    "    add_header X-Frame-Options DENY;",
                    "    add_header X-Content-Type-Options nosniff;",
                    '    add_header Strict-Transport-Security "max-age=63072000; includeSubDomains; preload" always;',
                    "    client_max_body_size 10M;",
                    "    proxy_connect_timeout 30s;",
                    "    proxy_send_timeout 60s;",
                    "    proxy_read_timeout 60s;",
                    # The same answer without proxying: what TLS and HTTP alone cost
                    # (scenario 3's floor); edge has the same location.
                    f"    location = {TLS_ONLY_PATH} {{",
                    "      default_type application/json;",
                    f"      return 200 '{STATUS_BODY}';",
                    "    }",
                    "    location / {",
                    "      proxy_pass http://backend;",
                    "      proxy_http_version 1.1;",
                    "      proxy_set_header Upgrade $http_upgrade;",
                    "      proxy_set_header Connection $connection_upgrade;",
                    "      proxy_set_header Host $host;",
                    "      proxy_set_header X-Real-IP $remote_addr;",
                    "      proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;",
                    "      proxy_set_header X-Forwarded-Proto $scheme;",
                    "    }",
                    "  }",
                ]
        conf.append("}")
        path = prefix / "nginx.conf"
        path.write_text("\n".join(conf) + "\n")
        server = Server("nginx", [self.s.nginx, "-p", str(prefix), "-c", str(path), "-e", "stderr",
                                  "-g", "daemon off;"], plain)
        server.tls_ports = tls_ports
        server.logs = prefix / "logs"
        return server

    def nginx_session_reused(self, kind):
        """Connections logged on nginx's `kind` listener so far, by
        `$ssl_session_reused`: {"r": resumed, ".": full handshakes}."""
        path = self.server("nginx").logs / f"{kind}.log"
        counts = {"r": 0, ".": 0}
        if path.exists():
            for line in path.read_text().split():
                counts[line] = counts.get(line, 0) + 1
        return counts

    def make_edge(self, kind, port=None, admin=True, name=None, resumption=True, tickets=False):
        """edge with the seed's settings; `resumption`: a session cache of
        20480 sessions (else none), `tickets`: session tickets on."""
        cert, key = self.ensure_certs()[kind]
        hyper = self.server("bare-hyper")
        port = port or free_port()
        name = name or f"edge-{kind}"
        admin = free_port() if admin else None
        admin_section = f'address = "127.0.0.1:{admin}"' if admin else "enabled = false"
        toml = f"""
[[listen]]
address = "127.0.0.1:{port}"
ssl = true

[admin]
{admin_section}

[http]
access_log = false
worker_connections = 30000
hsts = "max-age=63072000; includeSubDomains; preload"
x_frame_options = "DENY"
client_max_body_size = "10M"

[tls]
session_tickets = {"true" if tickets else "false"}
session_cache = {20480 if resumption else 0}
watch_interval = "0s"

[proxy]
connect_timeout = "30s"
send_timeout = "60s"
read_timeout = "60s"

[[upstream]]
name = "backend"
keepalive = 32
servers = [{{ address = "127.0.0.1:{hyper.port}" }}]

[[server]]
server_name = ["localhost"]
default_server = true
ssl_certificate = "{cert}"
ssl_certificate_key = "{key}"

# The same answer without proxying (nginx has the same location): scenario 3's floor.
[[server.location]]
path = "{TLS_ONLY_PATH}"
return = {{ status = 200, body = '{STATUS_BODY}' }}

[[server.location]]
path = "/"
proxy_pass = "backend"

# nginx's `worker_processes auto`: a worker process per CPU, one thread each.
[supervisor]
"""
        path = self.tmp / f"{name}.toml"
        path.write_text(toml)
        server = Server(name, [self.s.edge_bin, "--config", str(path)], port, {"RUST_LOG": "info"}, scheme="https")
        server.admin = admin
        return server

    def nginx_tls_url(self, kind, path="/_status"):
        nginx = self.server("nginx")
        if kind not in nginx.tls_ports:
            raise BenchError("nginx has no TLS listener (bare-hyper, the upstream, is missing)")
        return f"https://127.0.0.1:{nginx.tls_ports[kind]}{path}"

    # -- measuring --

    def compare(self, scenario, subjects, runner, duration=None, rounds=None, label="req/s"):
        """Runs `runner(url, seconds)` on each (name, url) subject: one
        discarded warm-up each, then `rounds` rounds, order mirrored every
        round. Returns rows with the best run (highest req/s) and every run."""
        duration = duration or self.s.duration
        rounds = rounds or self.s.rounds
        runs = {name: [] for name, _ in subjects}
        if self.s.warmup > 0:
            for name, url in subjects:
                progress(f"{scenario}: warm-up {name} ({self.s.warmup}s, discarded)")
                runner(url, self.s.warmup)
        order = []
        for r in range(1, rounds + 1):
            ordered = subjects if r % 2 else list(reversed(subjects))
            for name, url in ordered:
                progress(f"{scenario}: round {r}/{rounds} {name} ({duration}s)")
                run = runner(url, duration)
                run["round"] = r
                runs[name].append(run)
                order.append(name)
        rows = []
        first = subjects[0][0]
        for name, url in subjects:
            best = max(runs[name], key=lambda x: x["rps"])
            paired = [x["rps"] / y["rps"] for x, y in zip(runs[name], runs[first]) if y["rps"]]
            rows.append({
                "name": name, "url": url, "rps": best["rps"], "latency_ms": best.get("latency_ms", {}),
                "errors_total": sum(x.get("errors_total", 0) for x in runs[name]),
                "all_rps": [x["rps"] for x in runs[name]], "runs": runs[name],
                f"median_round_ratio_to_{first}": round(statistics.median(paired), 3) if paired else None,
            })
            for x in runs[name]:
                if x.get("errors_total"):
                    self.warnings.append(f"{scenario}: {name} round {x['round']}: errors {x.get('errors')}")
        return {"duration_s": duration, "rounds": rounds, "order": order, "rows": rows}

    def target(self, tid, text, value, threshold, op, unit="", detail=""):
        if value is None:
            met = None
        elif op == ">=":
            met = value >= threshold
        elif op == "<=":
            met = value <= threshold
        elif op == "<":
            met = value < threshold
        else:
            met = value == threshold
        self.targets.append({"id": tid, "target": text, "value": value, "threshold": threshold, "op": op,
                             "unit": unit, "met": met, "detail": detail})

    # -- scenarios --

    def scenario_status(self):
        names = self.servers_available(["bare-hyper", "frontend", "gunicorn-eventlet", "gunicorn-sync", "nginx"],
                                       "status")
        if "frontend" not in names:
            raise BenchError("frontend is required")
        servers = {name: self.server(name) for name in names}
        if "rss" in self.s.scenarios:
            self.rss_idle = self.worker_memory()
        for name, server in servers.items():
            answer = server.probe()
            if not answer or answer[0] != 200:
                raise BenchError(f"{name}: GET /_status answered {answer and answer[0]}")
        front_url = servers["frontend"].url()

        def runner(url, seconds):
            # frontend's workers share one accept socket: record how each run's
            # requests split between them (the admin /metrics counters).
            before = self.frontend_worker_requests(servers["frontend"]) if url == front_url else None
            run = self.load.http(url, seconds)
            if before is not None:
                after = self.frontend_worker_requests(servers["frontend"]) or {}
                delta = {slot: after.get(slot, 0) - before.get(slot, 0) for slot in after}
                run["worker_requests"] = delta
                total = sum(delta.values())
                run["busiest_worker_share"] = round(max(delta.values()) / total, 3) if total else None
            return run

        result = self.compare("status", [(n, servers[n].url()) for n in names], runner)
        result["tool"] = self.tool_line()
        shares = [x.get("busiest_worker_share") for row in result["rows"] if row["name"] == "frontend"
                  for x in row["runs"]]
        result["frontend_busiest_worker_share"] = shares
        if "rss" in self.s.scenarios:
            self.rss_after = self.worker_memory()
        rps = {row["name"]: row["rps"] for row in result["rows"]}
        ratios = {}
        for other in ("bare-hyper", "gunicorn-eventlet", "gunicorn-sync", "nginx"):
            if other in rps and rps[other] > 0:
                ratios[f"frontend/{other}"] = round(rps["frontend"] / rps[other], 3)
        result["ratios"] = ratios
        front = next(row for row in result["rows"] if row["name"] == "frontend")
        if "bare-hyper" in rps:
            result["frontend_over_bare_hyper_median_of_rounds"] = front.get("median_round_ratio_to_bare-hyper")
        self.target("status-hyper", "frontend /_status ≥ 0.85× bare hyper", ratios.get("frontend/bare-hyper"),
                    0.85, ">=", "×")
        self.target("status-gunicorn", "frontend /_status ≥ 20× gunicorn (eventlet, the seed's)",
                    ratios.get("frontend/gunicorn-eventlet"), 20, ">=", "×")
        return result

    def scenario_accept(self):
        """How frontend's workers share the port (WHARF_ACCEPT) and how many
        of them to run, side by side: keep-alive throughput, p99 and the
        busiest worker's share of requests; then a worker SIGKILLed under
        new-connection load (what happens to the connections queued for it)."""
        if not self.have("frontend"):
            raise BenchError("frontend is required")
        layouts = [
            ("reuseport 2×1", {"WHARF_ACCEPT": "reuseport", "WEB_CONCURRENCY": "2", "WHARF_WORKER_THREADS": "1"}),
            ("shared 2×1", {"WHARF_ACCEPT": "shared", "WEB_CONCURRENCY": "2", "WHARF_WORKER_THREADS": "1"}),
            ("1 worker × 2 threads", {"WEB_CONCURRENCY": "1", "WHARF_WORKER_THREADS": "2"}),
            ("reuseport 4×1", {"WHARF_ACCEPT": "reuseport", "WEB_CONCURRENCY": "4", "WHARF_WORKER_THREADS": "1"}),
            ("one process, 2 threads", {"WEB_CONCURRENCY": "0", "WHARF_WORKER_THREADS": "2"}),
        ]
        subjects, servers = [], {}
        if self.have("bare-hyper"):
            servers["bare-hyper"] = self.server("bare-hyper")
            subjects.append(("bare-hyper", servers["bare-hyper"].url()))
        for name, extra in layouts:
            progress(f"starting frontend ({name})")
            server = self.make_frontend(f"frontend-{name.replace(' ', '-').replace('×', 'x')}", extra)
            server.start(self.tmp, self.s.server_cpus)
            server.wait_ready(self.s.ready_timeout)
            servers[name] = server
            subjects.append((name, server.url()))
        by_url = {server.url(): server for server in servers.values()}

        def runner(url, seconds):
            server = by_url[url]
            admin = getattr(server, "admin", None)
            before = self.frontend_worker_requests(server) if admin else None
            run = self.load.http(url, seconds)
            if before:
                after = self.frontend_worker_requests(server) or {}
                delta = {slot: after.get(slot, 0) - before.get(slot, 0) for slot in after}
                total = sum(delta.values())
                run["worker_requests"] = delta
                run["busiest_worker_share"] = round(max(delta.values()) / total, 3) if total else None
            return run

        result = self.compare("accept", subjects, runner)
        for row in result["rows"]:
            shares = [x.get("busiest_worker_share") for x in row["runs"] if x.get("busiest_worker_share")]
            row["busiest_worker_share"] = shares
        # A worker SIGKILLed under new-connection load (one request per
        # connection, so connections keep queueing for the killed worker).
        kills = []
        if self.s.load_tool == "wrk":
            for name in ("reuseport 2×1", "shared 2×1"):
                server = servers[name]
                duration = max(6, self.s.duration)
                argv = self.load.wrk_argv(server.url(), duration, 16, ["Connection: close"])
                progress(f"accept: {name}: SIGKILL one worker under new-connection load ({duration}s)")
                proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                time.sleep(duration / 2)
                victims = children(server.pid)
                if victims:
                    os.kill(victims[0], signal.SIGKILL)
                out, err = proc.communicate(timeout=duration + 60)
                run = parse_wrk(out) if proc.returncode == 0 else {"rps": 0, "latency_ms": {}, "errors_total": None}
                kills.append({"name": name, "requests": run.get("requests"), "rps": run["rps"],
                              "latency_ms": run.get("latency_ms", {}), "errors": run.get("errors"),
                              "errors_total": run.get("errors_total")})
                time.sleep(1.0)
        result["worker_kill"] = kills
        for name in list(servers):
            if name != "bare-hyper":
                servers[name].stop()
        rps = {row["name"]: row["rps"] for row in result["rows"]}
        result["ratios"] = {f"{name}/bare-hyper": round(rps[name] / rps["bare-hyper"], 3)
                            for name in rps if name != "bare-hyper" and rps.get("bare-hyper")}
        result["tool"] = self.tool_line()
        if rps.get("shared 2×1"):
            self.target("accept-reuseport", "reuseport ≥ 1.1× shared socket (2 workers, keep-alive)",
                        round(rps["reuseport 2×1"] / rps["shared 2×1"], 3), 1.1, ">=", "×")
        return result

    def worker_memory(self):
        """Per-worker memory of frontend and the gunicorn peers (master excluded)."""
        out = {}
        for name in ("frontend", "gunicorn-eventlet", "gunicorn-sync"):
            server = self.servers.get(name)
            if not server or not server.alive():
                continue
            workers = [memory_of(pid) for pid in children(server.pid)]
            workers = [w for w in workers if w]
            master = memory_of(server.pid)
            out[name] = {
                "workers": len(workers),
                "worker_rss_bytes": [w["rss"] for w in workers],
                "worker_pss_bytes": [w["pss"] for w in workers],
                "master_rss_bytes": master and master["rss"],
                "total_pss_bytes": sum((w["pss"] or 0) for w in workers) + ((master or {}).get("pss") or 0),
            }
            if name == "frontend":
                out[name]["metrics_rss_bytes"] = self.frontend_metric_rss(server)
        return out

    def frontend_worker_requests(self, server):
        answer = http_get(f"http://127.0.0.1:{server.admin}/metrics")
        if not answer or answer[0] != 200:
            return None
        return {m.group(1): int(float(m.group(2))) for m in
                re.finditer(r'^wharf_worker_requests_total\{slot="(\d+)"\}\s+(\S+)', answer[2].decode(), re.M)}

    def frontend_metric_rss(self, server):
        answer = http_get(f"http://127.0.0.1:{server.admin}/metrics")
        if not answer or answer[0] != 200:
            return None
        return {m.group(1): int(float(m.group(2))) for m in
                re.finditer(r'^wharf_worker_rss_bytes\{slot="(\d+)"\}\s+(\S+)', answer[2].decode(), re.M)}

    def otlp_sink(self):
        """An OTLP/HTTP sink in this process: answers 200 to every POST and
        counts requests and bytes (what frontend-traces-on exports)."""
        if getattr(self, "_otlp_sink", None):
            return self._otlp_sink
        import http.server

        class Sink(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            counts = {"requests": 0, "bytes": 0}

            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                Sink.counts["requests"] += 1
                Sink.counts["bytes"] += len(body)
                self.send_response(200)
                self.send_header("Content-Type", self.headers.get("Content-Type") or "application/x-protobuf")
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args):
                pass

        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Sink)
        server.daemon_threads = True
        threading.Thread(target=server.serve_forever, daemon=True).start()
        server.port = server.server_address[1]
        server.counts = Sink.counts
        self._otlp_sink = server
        return server

    def cpu_runner(self, servers):
        """A compare() runner that also records the CPU time the server's
        process tree used per request (utime + stime from /proc): less
        sensitive than req/s to other work on a shared machine."""
        def cpu(pid):
            total = 0
            for p in [pid] + descendants(pid):
                try:
                    fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
                    total += int(fields[11]) + int(fields[12])
                except (OSError, IndexError, ValueError):
                    pass
            return total / os.sysconf("SC_CLK_TCK")

        def runner(url, seconds):
            server = servers[url]
            before = cpu(server.pid)
            run = self.load.http(url, seconds)
            used = cpu(server.pid) - before
            if run.get("requests"):
                run["cpu_us_per_request"] = round(used * 1e6 / run["requests"], 2)
            return run
        return runner

    @staticmethod
    def cpu_per_request(rows):
        """{name: median CPU µs per request over the rounds}."""
        out = {}
        for row in rows:
            values = [x["cpu_us_per_request"] for x in row["runs"] if x.get("cpu_us_per_request")]
            out[row["name"]] = round(statistics.median(values), 2) if values else None
        return out

    def scenario_metrics_overhead(self):
        """frontend /_status with request metrics on (the default) and off
        (WHARF_METRICS=false), two instances side by side, rounds alternating
        (mirrored order); then, through the app (/security.txt: /_status is
        answered before the app, where the server span sits), traces off vs on
        (every request sampled, exported to an in-harness OTLP sink)."""
        names = self.servers_available(["frontend-metrics-off", "frontend"], "metrics-overhead")
        if len(names) < 2:
            raise BenchError("needs FRONTEND_BIN")
        on, off = self.server("frontend"), self.server("frontend-metrics-off")
        subjects = [("metrics-off", off.url()), ("metrics-on", on.url())]
        status = self.compare("metrics-overhead", subjects, self.cpu_runner({off.url(): off, on.url(): on}))
        summary = self.on_off_summary(status, "metrics-on", "metrics-off")
        paired = summary["on_over_off_median_of_rounds"]
        rows = {row["name"]: row for row in status["rows"]}
        best = round(rows["metrics-on"]["rps"] / rows["metrics-off"]["rps"], 3) if rows["metrics-off"]["rps"] else None
        result = {"tool": self.tool_line(), "status_runs": status, **summary, "on_over_off_best_runs": best}
        self.target("metrics-overhead", "frontend /_status with metrics ≥ 0.95× without (≤ 5 % cost)", paired, 0.95,
                    ">=", "×", detail="median of the per-round ratios metrics-on/metrics-off")
        traced = self.server("frontend-traces-on")
        path = "/security.txt"
        subjects = [("traces-off", on.url(path)), ("traces-on", traced.url(path))]
        sink = self.otlp_sink()
        before = dict(sink.counts)
        traces = self.compare("metrics-overhead", subjects,
                              self.cpu_runner({on.url(path): on, traced.url(path): traced}))
        result["traces"] = {
            "path": path,
            "runs": traces,
            **self.on_off_summary(traces, "traces-on", "traces-off"),
            "exports": sink.counts["requests"] - before["requests"],
            "exported_bytes": sink.counts["bytes"] - before["bytes"],
        }
        return result

    def on_off_summary(self, runs, on, off):
        """The paired ratio `on`/`off` (median of the per-round ratios), its cost in
        per cent, and the CPU per request of each with its cost in per cent."""
        cpu = self.cpu_per_request(runs["rows"])
        rows = {row["name"]: row for row in runs["rows"]}
        paired = rows[on][f"median_round_ratio_to_{off}"]
        return {
            "on_over_off_median_of_rounds": paired,
            "cost_pct": round((1 - paired) * 100, 1) if paired is not None else None,
            "cpu_us_per_request": cpu,
            "cpu_cost_pct": round((cpu[on] / cpu[off] - 1) * 100, 1) if cpu.get(on) and cpu.get(off) else None,
        }

    def scenario_rss(self):
        if not hasattr(self, "rss_after"):
            names = self.servers_available(["frontend", "gunicorn-eventlet"], "rss")
            for name in names:
                self.server(name)
            self.rss_idle = self.worker_memory()
            for name in names:
                progress(f"rss: load on {name} ({self.s.duration}s)")
                self.load.http(self.server(name).url(), self.s.duration)
            self.rss_after = self.worker_memory()
        rows = []
        for name in self.rss_after:
            idle, after = self.rss_idle.get(name, {}), self.rss_after[name]
            rows.append({
                "name": name, "workers": after["workers"],
                "idle_max_worker_rss_mb": mb(max(idle.get("worker_rss_bytes") or [0])),
                "after_max_worker_rss_mb": mb(max(after["worker_rss_bytes"] or [0])),
                "idle_total_pss_mb": mb(idle.get("total_pss_bytes")),
                "after_total_pss_mb": mb(after["total_pss_bytes"]),
                "idle": idle, "after": after,
            })
        front = next((r for r in rows if r["name"] == "frontend"), None)
        self.target("rss", "≤ 12 MB RSS per frontend worker (after load)",
                    front and front["after_max_worker_rss_mb"], 12, "<=", "MB")
        return {"rows": rows, "load": f"the {self.s.duration}s /_status runs of scenario (1)"}

    def scenario_ready(self):
        runs = self.s.ready_runs
        hyperfine = shutil.which("hyperfine")
        subjects = []
        for name in self.servers_available(["frontend", "bare-hyper", "gunicorn-eventlet", "nginx", "edge-ecdsa"],
                                           "ready"):
            port = free_port()
            tls = False
            if name == "frontend":
                env = self.frontend_env(port)
                subjects.append(("frontend", [self.s.frontend_bin, "serve"], env, port, False))
                port = free_port()
                subjects.append(("frontend --workers 0", [self.s.frontend_bin, "serve", "--workers", "0"],
                                 self.frontend_env(port), port, False))
                continue
            if name == "bare-hyper":
                server = self.make_bare_hyper(port)
            elif name == "gunicorn-eventlet":
                server = self.make_gunicorn("eventlet", port)
            elif name == "nginx":
                prefix = self.tmp / "nginx-ready"
                (prefix / "logs").mkdir(parents=True, exist_ok=True)
                conf = prefix / "nginx.conf"
                conf.write_text(
                    "worker_processes auto;\n" + ("user root;\n" if os.getuid() == 0 else "") +
                    f"pid {prefix}/nginx.pid;\nerror_log {prefix}/logs/error.log warn;\n"
                    "events { worker_connections 1024; }\nhttp { access_log off;\n" +
                    "".join(f"  {d}_temp_path {prefix}/{d};\n" for d in ("client_body", "proxy", "fastcgi",
                                                                            "uwsgi", "scgi")) +
                    f"  server {{ listen 127.0.0.1:{port}; location = /_status {{ return 200 'ok'; }} }}\n}}\n")
                server = Server("nginx", [self.s.nginx, "-p", str(prefix), "-c", str(conf), "-e", "stderr",
                                          "-g", "daemon off;"], port)
            else:
                server = self.make_edge("ecdsa", port=port, admin=False, name="edge")
                tls = True
            subjects.append((server.name, server.argv, server.env, port, tls))
        rows = []
        for name, argv, env, port, tls in subjects:
            record = self.tmp / f"ready-{name.replace(' ', '_')}.jsonl"
            record.unlink(missing_ok=True)
            cmd = [sys.executable, str(BENCH / "start_ready.py"), "--port", str(port), "--record", str(record)]
            cmd += (["--tls"] if tls else []) + ["--"] + argv
            full_env = server_env(env)
            progress(f"ready: {name} ({runs} runs)")
            row = {"name": name}
            if hyperfine:
                export = self.tmp / "hyperfine.json"
                out = subprocess.run([hyperfine, "-N", "--warmup", str(self.s.ready_warmup), "--runs", str(runs),
                                      "--export-json",
                                      str(export), "--style", "none", shlex.join(cmd)],
                                     env=full_env, capture_output=True, text=True, timeout=120 + runs * 30)
                if out.returncode != 0:
                    raise BenchError(f"hyperfine failed for {name}:\n{out.stdout}{out.stderr}")
                h = json.loads(export.read_text())["results"][0]
                row["hyperfine_cycle_ms"] = {"mean": round(h["mean"] * 1e3, 1), "stddev": round(h["stddev"] * 1e3, 1)}
                samples = [json.loads(line)["ready_ms"] for line in record.read_text().splitlines()]
                samples = samples[self.s.ready_warmup:]
            else:
                for _ in range(runs):
                    out = subprocess.run(cmd, env=full_env, capture_output=True, text=True, timeout=60)
                    if out.returncode != 0:
                        raise BenchError(f"{name} was not ready:\n{out.stderr}")
                samples = [json.loads(line)["ready_ms"] for line in record.read_text().splitlines()]
            row.update({"runs_ms": samples, "median_ms": round(statistics.median(samples), 1),
                        "min_ms": min(samples), "max_ms": max(samples)})
            rows.append(row)
        front = self.servers.get("frontend")
        master_ready = None
        if front:
            for line in front.log_text().splitlines():
                if "All workers ready" in line:
                    try:
                        master_ready = json.loads(line).get("ready_ms")
                    except ValueError:
                        pass
        med = next((r["median_ms"] for r in rows if r["name"] == "frontend"), None)
        self.target("ready", "frontend start to ready < 200 ms", med, 200, "<", "ms",
                    "spawn to first 200 on /_status, median")
        return {"rows": rows, "runs": runs, "hyperfine": bool(hyperfine),
                "frontend_master_all_workers_ready_ms": master_ready,
                "definition": "from spawning the process to its first 2xx answer to GET /_status "
                              "(polled every 2 ms), median of the runs; hyperfine_cycle_ms is hyperfine's mean "
                              "of the whole start, ready, SIGKILL cycle of bench/start_ready.py"}

    def reload_run(self, scenario, name, url, send, reloads, duration):
        argv = self.load.wrk_argv(url, duration)
        progress(f"{scenario}: {name} under load, {reloads} reload(s) in {duration}s")
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        started = time.monotonic()
        sent = []
        for i in range(reloads):
            at = duration * (i + 1) / (reloads + 1)
            time.sleep(max(0.0, at - (time.monotonic() - started)))
            send()
            sent.append(round(time.monotonic() - started, 2))
        out, err = proc.communicate(timeout=duration + 60)
        if proc.returncode != 0:
            raise BenchError(f"wrk failed:\n{out}{err}")
        run = parse_wrk(out)
        return {"name": name, "url": url, "reloads": reloads, "sent_at_s": sent, "rps": run["rps"],
                "latency_ms": run["latency_ms"], "requests": run["requests"], "errors": run["errors"],
                "errors_total": run["errors_total"]}

    def scenario_reload(self):
        if self.s.load_tool != "wrk":
            raise BenchError("needs wrk")
        reloads, duration = self.s.reloads, self.s.reload_duration
        rows = []
        if self.have("frontend"):
            front = self.server("frontend")
            before = set(children(front.pid))
            row = self.reload_run("reload", "frontend (SIGHUP)", front.url(), lambda: front.signal(signal.SIGHUP),
                                  reloads, duration)
            time.sleep(1.0)
            after = set(children(front.pid))
            row["workers_replaced"] = len(before - after)
            rows.append(row)
            # Binary upgrade: each SIGUSR2 goes to whichever master serves now
            # (the previous one hands over and exits).
            row = self.reload_run("reload", "frontend (SIGUSR2 binary upgrade)", front.url(),
                                  lambda: os.kill(group_master(front.pid), signal.SIGUSR2), reloads, duration)
            rows.append(row)
            # The master this harness started has handed over: later
            # scenarios start a fresh frontend.
            front.stop()
            self.servers.pop("frontend", None)
        if self.have("nginx"):
            nginx = self.server("nginx")
            rows.append(self.reload_run("reload", "nginx (SIGHUP), return 200", nginx.url(),
                                        lambda: nginx.signal(signal.SIGHUP), reloads, duration))
            time.sleep(1.0)
        if self.have("edge-ecdsa"):
            edge = self.server("edge-ecdsa")
            rows.append(self.reload_run("reload", "edge (SIGHUP), TLS proxy", edge.url(),
                                        lambda: edge.signal(signal.SIGHUP), reloads, duration))
            if self.have("nginx"):
                nginx = self.server("nginx")
                rows.append(self.reload_run("reload", "nginx (SIGHUP), TLS proxy", self.nginx_tls_url("ecdsa"),
                                            lambda: nginx.signal(signal.SIGHUP), reloads, duration))
        ours = [r for r in rows if r["name"].startswith(("frontend (SIG", "edge")) and "errors_total" in r]
        total = sum(r["errors_total"] for r in ours) if ours else None
        self.target("reload", "zero errors during reloads (frontend HUP and USR2, edge HUP)", total, 0, "==", "errors")
        return {"rows": rows, "duration_s": duration, "reloads_per_run": reloads, "tool": self.tool_line()}

    def landing_url(self, front):
        """The first sample document's landing page, from frontend's start-up log."""
        url = None
        for line in front.log_text().splitlines():
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if record.get("message") == "Sample document" and record.get("url"):
                url = record["url"]
                break
        if not url:
            raise BenchError(f"no 'Sample document' URL in {front.name}'s log:\n{front.log_tail()}")
        answer = http_get(url)
        if not answer or answer[0] != 200:
            raise BenchError(f"{url} answered {answer and answer[0]}")
        return url, answer

    def scenario_landing(self):
        front = self.server("frontend")
        url, answer = self.landing_url(front)
        result = self.compare("landing", [("frontend /_status", front.url()), ("frontend landing page", url)],
                              self.load.http)
        rps = [row["rps"] for row in result["rows"]]
        result["ratios"] = {"landing/_status": round(rps[1] / rps[0], 3) if rps[0] else None}
        result["page_bytes"] = len(answer[2])
        result["path"] = urlsplit(url).path + "?key=[redacted]"
        result["tool"] = self.tool_line()
        return result

    def scenario_edge_tls(self):
        if not (self.have("edge-ecdsa") and self.have("nginx") and self.have("bare-hyper")):
            raise BenchError("needs edge, nginx and bare-hyper (the upstream)")
        if self.s.load_tool != "wrk":
            raise BenchError("needs wrk")
        edge = self.server("edge-ecdsa")
        upstream = self.server("bare-hyper")
        nginx_url = self.nginx_tls_url("ecdsa")
        tls_only = {"edge": edge.url(TLS_ONLY_PATH), "nginx": self.nginx_tls_url("ecdsa", TLS_ONLY_PATH)}
        subjects = [("edge", edge.url()), ("nginx", nginx_url)]
        by_url = {edge.url(): edge, nginx_url: self.server("nginx"),
                  tls_only["edge"]: edge, tls_only["nginx"]: self.server("nginx")}

        def measured(run_load):
            # The proxy's own CPU per request (all its processes, user and
            # kernel): steadier than req/s on a shared 2-CPU machine, and it
            # says where a difference comes from. The upstream's and the load
            # generator's too: the three share the machine's CPUs, so what
            # one request costs them all together bounds the req/s.
            def runner(url, seconds):
                time_wait = tcp_time_wait()
                before = by_url[url].cpu()
                up_before = upstream.cpu()
                load_before = resource.getrusage(resource.RUSAGE_CHILDREN)
                run = run_load(url, seconds)
                load_after = resource.getrusage(resource.RUSAGE_CHILDREN)
                up_after = upstream.cpu()
                after = by_url[url].cpu()
                n = run.get("requests")
                # Connections closed recently on this machine (TIME_WAIT):
                # a proxy that opens and closes upstream connections leaves
                # them, and they slow every later connect() for a minute.
                run["tcp_time_wait"] = {"before": time_wait, "after": tcp_time_wait()}
                if n:
                    run["cpu_us_per_request"] = {
                        "user": round((after[0] - before[0]) * 1e6 / n, 2),
                        "system": round((after[1] - before[1]) * 1e6 / n, 2),
                    }
                    run["upstream_cpu_us_per_request"] = round(
                        (sum(up_after) - sum(up_before)) * 1e6 / n, 2)
                    run["load_generator_cpu_us_per_request"] = round(
                        (load_after.ru_utime + load_after.ru_stime - load_before.ru_utime
                         - load_before.ru_stime) * 1e6 / n, 2)
                return run
            return runner

        h1 = self.compare("edge-tls h1", subjects, measured(self.load.wrk))
        floor = self.compare("edge-tls h1 without proxying", list(tls_only.items()), measured(self.load.wrk))
        out = {"upstream": "bare-hyper (keep-alive pool of 32 from each proxy)", "certificate": "ECDSA P-256",
               "http1": {**h1, "tool": self.tool_line()}}
        out["http1"]["cpu_us_per_request"] = cpu_per_request(h1["rows"])
        out["http1"]["budget"] = cpu_budget(h1["rows"], floor["rows"])
        floor["cpu_us_per_request"] = cpu_per_request(floor["rows"])
        floor["path"] = TLS_ONLY_PATH
        out["tls_only"] = floor
        rows = {r["name"]: r for r in h1["rows"]}
        ratio = round(rows["edge"]["rps"] / rows["nginx"]["rps"], 3) if rows["nginx"]["rps"] else None
        out["http1"]["ratios"] = {"edge/nginx": ratio}
        self.target("tls-rps", "edge TLS keep-alive ≥ 1.1× nginx (HTTP/1.1)", ratio, 1.1, ">=", "×")
        p99e, p99n = rows["edge"]["latency_ms"].get("p99"), rows["nginx"]["latency_ms"].get("p99")
        self.target("tls-p99", "edge TLS keep-alive p99 ≤ nginx p99", p99e, p99n, "<=", "ms",
                    f"nginx p99 {p99n} ms")
        if shutil.which("h2load"):
            h2 = self.compare("edge-tls h2", subjects, measured(lambda url, d: self.load.h2load(url, d, self.tmp)))
            h2["cpu_us_per_request"] = cpu_per_request(h2["rows"])
            rows2 = {r["name"]: r for r in h2["rows"]}
            h2["ratios"] = {"edge/nginx": round(rows2["edge"]["rps"] / rows2["nginx"]["rps"], 3)
                            if rows2["nginx"]["rps"] else None}
            h2["tool"] = (f"h2load -t{self.s.wrk_threads} -c{self.s.h2_clients} -m{self.s.h2_streams} "
                          "(HTTP/2 over TLS 1.3)")
            out["http2"] = h2
        else:
            self.note("edge-tls", "HTTP/2: not run (h2load missing; apt-get install nghttp2-client)")
        return out

    def edge_tls_metrics(self, server):
        answer = http_get(f"http://127.0.0.1:{server.admin}/metrics")
        if not answer or answer[0] != 200:
            return {}
        out = {}
        for m in re.finditer(r"^(edge_tls_handshakes_total|edge_tls_resumed_total)(?:\{[^}]*\})?\s+(\S+)",
                             answer[2].decode(), re.M):
            out[m.group(1)] = out.get(m.group(1), 0) + int(float(m.group(2)))
        return out

    def scenario_handshakes(self):
        if not (self.have("edge-ecdsa") and self.have("nginx") and self.have("bare-hyper")):
            raise BenchError("needs edge, nginx and bare-hyper (the upstream)")
        if self.s.load_tool != "wrk":
            raise BenchError("needs wrk")
        out = {"method": "wrk with `Connection: close`: every request is a new TCP connection and a new TLS 1.3 "
                         "handshake, so req/s = handshakes/s. wrk resumes sessions when the server allows it, so "
                         "this scenario uses listeners with session resumption off on both servers (edge "
                         "`session_cache = 0`, `session_tickets = false`; nginx `ssl_session_cache off; "
                         "ssl_session_tickets off;`): every handshake is a full one (edge's "
                         "edge_tls_resumed_total is checked to stay 0)"}
        for kind in ("ecdsa", "rsa"):
            edge = self.server(f"edge-hs-{kind}")
            before = self.edge_tls_metrics(edge)

            def runner(url, seconds):
                return self.load.wrk(url, seconds, headers=("Connection: close",))

            result = self.compare(f"handshakes {kind}",
                                  [("edge", edge.url()), ("nginx", self.nginx_tls_url(f"hs-{kind}"))], runner)
            after = self.edge_tls_metrics(edge)
            result["edge_metrics_delta"] = {k: after.get(k, 0) - before.get(k, 0) for k in after}
            if result["edge_metrics_delta"].get("edge_tls_resumed_total"):
                self.warnings.append(f"handshakes {kind}: edge resumed "
                                     f"{result['edge_metrics_delta']['edge_tls_resumed_total']} sessions")
            rows = {r["name"]: r for r in result["rows"]}
            ratio = round(rows["edge"]["rps"] / rows["nginx"]["rps"], 3) if rows["nginx"]["rps"] else None
            result["ratios"] = {"edge/nginx": ratio}
            self.target(f"handshakes-{kind}", f"edge handshakes/s ≥ nginx ({kind.upper()})", ratio, 1.0, ">=", "×")
            out[kind] = result
        return out

    def scenario_resume(self):
        if not (self.have("edge-ecdsa") and self.have("nginx") and self.have("bare-hyper")):
            raise BenchError("needs edge, nginx and bare-hyper (the upstream)")
        if self.s.load_tool != "wrk":
            raise BenchError("needs wrk")
        out = {"method": "wrk with `Connection: close`: every request is a new TCP connection and a new TLS 1.3 "
                         "handshake, and each wrk connection offers the session of its previous one, as a "
                         "returning browser does; both servers run a worker process per CPU. Two ways to "
                         "resume: the session cache (edge `session_cache = 20480`, `session_tickets = false`; "
                         "nginx `ssl_session_cache shared:SSL:10m; ssl_session_tickets off;`, the seed's) and "
                         "session tickets alone (edge `session_tickets = true`, `session_cache = 0`; nginx "
                         "`ssl_session_tickets on; ssl_session_cache off;`, whose ticket keys every worker "
                         "shares). Resumed share of the handshakes: edge's edge_tls_resumed_total / "
                         "edge_tls_handshakes_total on its admin /metrics, nginx's `$ssl_session_reused` "
                         "(`r` or `.`) in an access log on these listeners only (one character per "
                         "connection, buffered), both over the warm-up and every round. Each wrk run's first "
                         f"handshake on each of its {self.s.connections} connections has no session to offer: "
                         "`resumed %` counts every handshake, `of offered` leaves those out (the share of the "
                         "sessions offered that the server resumed; the target is on it)"}
        wrk_runs = self.s.rounds + (1 if self.s.warmup > 0 else 0)
        first = self.s.connections * wrk_runs  # handshakes per server that offered no session

        def pct(part, whole):
            return round(100 * part / whole, 2) if whole and whole > 0 else None

        def runner(url, seconds):
            return self.load.wrk(url, seconds, headers=("Connection: close",))

        for variant, label in RESUME_VARIANTS:
            out[variant] = {}
            for kind in ("ecdsa", "rsa"):
                edge = self.server(f"edge-{variant}-{kind}")
                nginx_kind = f"{variant}-{kind}"
                nginx_url = self.nginx_tls_url(nginx_kind)
                before, logged_before = self.edge_tls_metrics(edge), self.nginx_session_reused(nginx_kind)
                result = self.compare(f"resume {variant} {kind}", [("edge", edge.url()), ("nginx", nginx_url)],
                                      runner)
                time.sleep(NGINX_LOG_FLUSH + 1)  # nginx's workers flush their log buffers
                after, logged_after = self.edge_tls_metrics(edge), self.nginx_session_reused(nginx_kind)
                delta = {k: after.get(k, 0) - before.get(k, 0) for k in after}
                reused = {k: logged_after.get(k, 0) - logged_before.get(k, 0) for k in ("r", ".")}
                result["edge_metrics_delta"] = delta
                result["nginx_session_reused"] = reused
                hs, n = delta.get("edge_tls_handshakes_total", 0), reused["r"] + reused["."]
                resumed = {"edge": delta.get("edge_tls_resumed_total", 0), "nginx": reused["r"]}
                result["resumed_pct"] = {"edge": pct(resumed["edge"], hs), "nginx": pct(resumed["nginx"], n)}
                result["handshakes_without_session"] = first
                result["resumed_pct_of_offered"] = {"edge": pct(resumed["edge"], hs - first),
                                                    "nginx": pct(resumed["nginx"], n - first)}
                rows = {r["name"]: r for r in result["rows"]}
                ratio = round(rows["edge"]["rps"] / rows["nginx"]["rps"], 3) if rows["nginx"]["rps"] else None
                result["ratios"] = {"edge/nginx": ratio}
                offered = result["resumed_pct_of_offered"]
                if offered["nginx"] is None or offered["nginx"] < 90:
                    self.warnings.append(f"resume {variant} {kind}: nginx resumed {offered['nginx']} % of the "
                                         f"sessions offered ({reused}): the comparison is not of returning clients")
                self.target(f"resume-{variant}-{kind}",
                            f"edge returning clients/s ≥ nginx ({label}, {kind.upper()})", ratio, 1.0, ">=", "×",
                            f"resumed of offered: edge {offered['edge']} %, nginx {offered['nginx']} %; p99 edge "
                            f"{rows['edge']['latency_ms'].get('p99')} ms, nginx "
                            f"{rows['nginx']['latency_ms'].get('p99')} ms")
                out[variant][kind] = result
            rates = {k: out[variant][k]["resumed_pct_of_offered"] for k in ("ecdsa", "rsa")}
            edge_rates = [r["edge"] for r in rates.values()]
            self.target(f"resume-{variant}-rate",
                        f"edge resumes ≥ 99 % of the sessions returning clients offer ({label})",
                        None if None in edge_rates else min(edge_rates), 99, ">=", "%",
                        "of the sessions offered; " + "; ".join(f"{k.upper()}: edge {r['edge']} %, nginx {r['nginx']} %"
                                                                for k, r in rates.items()))
        return out

    def scenario_idle(self):
        if not (self.have("edge-ecdsa") and self.have("nginx") and self.have("bare-hyper")):
            raise BenchError("needs edge, nginx and bare-hyper (the upstream)")
        n = self.s.idle_connections
        rows = []
        for name, url in (("edge", None), ("nginx", None)):
            server = self.server("edge-ecdsa") if name == "edge" else self.server("nginx")
            url = server.url() if name == "edge" else self.nginx_tls_url("ecdsa")
            port = urlsplit(url).port
            # Let earlier load settle, then a baseline with no client connected.
            time.sleep(1.0)
            base = server.memory()
            progress(f"idle: {n} TLS connections to {name}")
            client = subprocess.Popen([sys.executable, str(BENCH / "idle_conns.py"), "--port", str(port),
                                       "--connections", str(n)],
                                      stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
            try:
                line = client.stdout.readline()
                opened = json.loads(line) if line.strip() else {"open": 0, "failed": n}
                time.sleep(1.0)
                held = server.memory()
            finally:
                try:
                    client.stdin.write("close\n")
                    client.stdin.close()
                except OSError:
                    pass
                try:
                    client.wait(timeout=60)
                except subprocess.TimeoutExpired:
                    client.kill()
            base_rss, held_rss = sum(p["rss"] or 0 for p in base), sum(p["rss"] or 0 for p in held)
            base_pss, held_pss = sum(p["pss"] or 0 for p in base), sum(p["pss"] or 0 for p in held)
            rows.append({
                "name": name, "connections_requested": n, "connections_open": opened.get("open"),
                "connections_failed": opened.get("failed"), "open_seconds": opened.get("seconds"),
                "processes": len(held),
                "baseline_pss_mb": mb(base_pss), "held_pss_mb": mb(held_pss),
                "baseline_rss_mb": mb(base_rss), "held_rss_mb": mb(held_rss),
                "per_connection_kb": round((held_pss - base_pss) / max(1, opened.get("open") or 1) / 1024, 2),
            })
            if opened.get("failed"):
                self.warnings.append(f"idle: {name}: {opened['failed']} of {n} connections failed "
                                     f"{opened.get('failures_sample')}")
        r = {row["name"]: row for row in rows}
        self.target("idle", f"edge memory holding {n} idle TLS connections ≤ nginx (PSS, all processes)",
                    r["edge"]["held_pss_mb"], r["nginx"]["held_pss_mb"], "<=", "MB",
                    f"nginx {r['nginx']['held_pss_mb']} MB")
        return {"rows": rows, "connections": n,
                "method": "bench/idle_conns.py opens the connections (TLS 1.3, one keep-alive GET /_status each) "
                          "and holds them; memory is the PSS (and RSS) summed over every process of the server, "
                          "measured 1 s after the last connection opened"}

    def scenario_ratelimit(self):
        result = {}
        if self.s.load_tool == "wrk" and shutil.which("redis-server"):
            result["landing"] = self.ratelimit_landing()
        else:
            self.note("ratelimit", "landing page with the limiter in memory / Redis / off: not run "
                                   "(needs wrk and redis-server)")
        if self.s.quick and not self.s.explicit_scenarios:
            self.note("ratelimit", "bench/ratelimit.sh: not run in --quick (it builds a cargo bench in release)")
        elif not (BENCH / "ratelimit.sh").exists():
            self.note("ratelimit", "bench/ratelimit.sh: does not exist yet")
        else:
            try:
                result.update(self.ratelimit_script())
            except BenchError as e:
                result["script_error"] = str(e)
                self.note("ratelimit", f"bench/ratelimit.sh: failed: {str(e).splitlines()[0]} "
                                       "(its output is in the results file)")
        if not result:
            raise BenchError("needs wrk and redis-server, or bench/ratelimit.sh")
        return result

    def ratelimit_landing(self):
        """The landing page on three frontends: the document zone checked in
        memory (the scenario (1) instance), in Redis (a redis-server of its own),
        and no limiter at all; the rate is out of reach, so every check passes."""
        redis = self.make_redis().start(self.tmp)
        self.servers["redis"] = redis
        redis.wait_ready(self.s.ready_timeout)
        front = self.server("frontend")
        variants = {
            "frontend-redis": {"REDIS_ENABLED": "true", "REDIS_URL": f"redis://127.0.0.1:{redis.port}"},
            "frontend-nolimit": {"WHARF_RATELIMIT_ENABLED": "false"},
        }
        servers = {"limiter in memory": front}
        for name, extra in variants.items():
            progress(f"starting {name}")
            server = self.make_frontend(name, extra).start(self.tmp, self.s.server_cpus)
            self.servers[name] = server
            server.wait_ready(self.s.ready_timeout)
            servers["limiter in Redis" if name == "frontend-redis" else "no limiter"] = server
        subjects = [(label, self.landing_url(server)[0]) for label, server in servers.items()]
        before = redis_commands(redis.port)
        result = self.compare("ratelimit landing", subjects, self.load.http)
        after = redis_commands(redis.port)
        result["redis_commands_during_runs"] = None if before is None or after is None else after - before
        if not result["redis_commands_during_runs"]:
            self.warnings.append("ratelimit: the Redis-backed frontend sent no commands to Redis")
        rps = {row["name"]: row["rps"] for row in result["rows"]}
        none = rps.get("no limiter")
        result["ratios"] = {f"{k}/no limiter": round(v / none, 3) for k, v in rps.items() if none and k != "no limiter"}
        result["tool"] = self.tool_line()
        return result

    def ratelimit_script(self):
        script = BENCH / "ratelimit.sh"
        progress("ratelimit: bench/ratelimit.sh (builds its cargo bench in release first)")
        try:
            out = subprocess.run(["bash", str(script), "--duration", str(self.s.duration)], cwd=ROOT,
                                 capture_output=True, text=True, timeout=1500)
        except subprocess.TimeoutExpired as e:
            raise BenchError("bench/ratelimit.sh did not finish within 25 minutes") from e
        text = out.stdout
        if out.returncode != 0:
            raise BenchError(f"bench/ratelimit.sh failed:\n{text[-2000:]}{out.stderr[-2000:]}")

        def num(pattern):
            m = re.search(pattern, text)
            return float(m.group(1)) if m else None

        result = {
            "script": "bench/ratelimit.sh",
            "in_memory_checks_per_s": num(r"in-memory Limiter::check \(custom key\), 1 core:\s+([0-9.]+)"),
            "redis_check_p50_ms": num(r"redis check latency, 1 in flight: p50 ([0-9.]+) ms"),
            "redis_check_p99_ms": num(r"redis check latency, 1 in flight: .*?p99 ([0-9.]+) ms"),
            "redis_checks_per_s": num(r"redis checks/s, 64 in flight:\s+([0-9.]+)"),
            "redis_benchmark_set_per_s": num(r"redis-benchmark SET, 64 clients:\s+([0-9.]+)"),
            "redis_checks_over_set": num(r"ratio wharf checks / SET:\s+([0-9.]+)"),
            "http_limiter_on_rps": num(r"best: on ([0-9.]+) req/s"),
            "http_limiter_off_rps": num(r"off ([0-9.]+) req/s, ratio"),
            "http_on_over_off": num(r"ratio on/off ([0-9.]+)"),
            "output": text,
        }
        self.target("redis-p99", "Redis rate-limit check p99 ≤ 0.5 ms", result["redis_check_p99_ms"], 0.5, "<=",
                    "ms")
        return result

    def tool_line(self):
        if self.s.load_tool == "python":
            return f"python3 keep-alive load loop, {self.s.connections} connections"
        return f"wrk -t{self.s.wrk_threads} -c{self.s.connections} --latency (HTTP/1.1 keep-alive)"

    # -- the run --

    def run(self):
        selected = self.s.scenarios
        for i, sid in enumerate(selected, 1):
            progress(f"scenario {i}/{len(selected)}: {sid} — {TITLES[sid]}")
            started = time.monotonic()
            try:
                result = getattr(self, f"scenario_{sid.replace('-', '_')}")()
                result["status"] = "ok"
            except BenchError as e:
                progress(f"{sid}: not measured: {e}")
                result = {"status": "skipped" if str(e).startswith("needs") else "failed", "reason": str(e)}
            result["title"] = TITLES[sid]
            result["seconds"] = round(time.monotonic() - started, 1)
            if sid in self.notes:
                result["notes"] = self.notes[sid]
            self.results[sid] = result
        measured = {t["id"] for t in self.targets}
        for tid, text, threshold, op, unit in TARGETS:
            if tid not in measured:
                self.target(tid, text, None, threshold, op, unit)
        order = [t[0] for t in TARGETS]
        self.targets.sort(key=lambda t: order.index(t["id"]) if t["id"] in order else len(order))


def redis_commands(port):
    """Redis's total_commands_processed, or None."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=2) as sock:
            sock.sendall(b"INFO stats\r\n")
            data = b""
            while b"total_commands_processed" not in data or not data.endswith(b"\r\n"):
                chunk = sock.recv(65536)
                if not chunk:
                    break
                data += chunk
        m = re.search(rb"total_commands_processed:(\d+)", data)
        return int(m.group(1)) if m else None
    except OSError:
        return None


def mb(n):
    return None if n is None else round(n / MB, 2)


# --- machine ---------------------------------------------------------------------

def cpu_busy_pct():
    def snap():
        with open("/proc/stat", encoding="utf-8") as f:
            v = [int(x) for x in f.readline().split()[1:9]]
        return sum(v), v[3] + v[4]

    t0, i0 = snap()
    time.sleep(1)
    t1, i1 = snap()
    return round(100.0 * (1 - (i1 - i0) / max(t1 - t0, 1)))


def loadavg():
    try:
        return open("/proc/loadavg", encoding="utf-8").read().split()[:3]
    except OSError:
        return None


def machine_info():
    cpu_model = None
    try:
        for line in open("/proc/cpuinfo", encoding="utf-8"):
            if line.lower().startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"nproc": os.cpu_count(), "kernel": platform.release(), "arch": platform.machine(),
            "cpu_model": cpu_model}


def tool_versions(settings):
    def first_line(argv):
        try:
            out = subprocess.run(argv, capture_output=True, text=True, timeout=10)
            return (out.stdout + out.stderr).strip().splitlines()[0]
        except (OSError, IndexError, subprocess.TimeoutExpired):
            return None

    return {
        "wrk": first_line(["wrk", "-v"]) if shutil.which("wrk") else None,
        "h2load": first_line(["h2load", "--version"]) if shutil.which("h2load") else None,
        "hyperfine": first_line(["hyperfine", "--version"]) if shutil.which("hyperfine") else None,
        "nginx": first_line([settings.nginx, "-v"]) if settings.nginx else None,
        "gunicorn": first_line([settings.gunicorn, "--version"]) if settings.gunicorn else None,
        "openssl": first_line(["openssl", "version"]) if shutil.which("openssl") else None,
        "python": platform.python_version(),
    }


def git_info():
    try:
        rev = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True, text=True,
                             timeout=10).stdout.strip() or None
        dirty = bool(subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain"], capture_output=True,
                                    text=True, timeout=30).stdout.strip()) if rev else None
        return {"revision": rev, "dirty": dirty}
    except (OSError, subprocess.TimeoutExpired):
        return {"revision": None, "dirty": None}


# --- settings ----------------------------------------------------------------------

def parse_settings(argv):
    p = argparse.ArgumentParser(prog="bench/run", description="wharf vs nginx, gunicorn and bare hyper.")
    p.add_argument("--quick", action="store_true")
    p.add_argument("--smoke", action="store_true")
    p.add_argument("--duration", type=int)
    p.add_argument("--rounds", type=int)
    p.add_argument("--warmup", type=int)
    p.add_argument("--scenarios")
    p.add_argument("--connections", type=int, default=64)
    p.add_argument("--idle-connections", type=int)
    p.add_argument("--results-dir")
    p.add_argument("--no-docs", action="store_true")
    p.add_argument("--strict", action="store_true")
    p.add_argument("--load-tool", choices=["auto", "wrk", "python"], default="auto")
    p.add_argument("--pin", action="store_true")
    p.add_argument("--no-build", action="store_true")  # handled by bench/run
    p.add_argument("--no-install", action="store_true")  # handled by bench/run
    a = p.parse_args(argv)
    for flag in ("duration", "rounds", "connections", "idle_connections"):
        v = getattr(a, flag)
        if v is not None and v < 1:
            p.error(f"--{flag.replace('_', '-')} must be at least 1")
    s = argparse.Namespace()
    s.quick, s.smoke, s.strict = a.quick, a.smoke, a.strict
    if a.smoke:
        s.duration, s.rounds, s.warmup, s.connections = 1, 1, 0, 4
        s.load_tool = "python"
        s.docs = False
    else:
        s.duration = a.duration or (2 if a.quick else 10)
        s.rounds = a.rounds or (1 if a.quick else 2)
        s.warmup = a.warmup if a.warmup is not None else (1 if a.quick else 2)
        s.connections = a.connections
        s.load_tool = a.load_tool
        s.docs = not a.no_docs
    if s.load_tool == "auto":
        s.load_tool = "wrk" if shutil.which("wrk") else "python"
    if s.load_tool == "wrk" and not shutil.which("wrk"):
        p.error("--load-tool wrk: wrk is not installed")
    s.explicit_scenarios = bool(a.scenarios)
    if a.scenarios:
        s.scenarios = [x.strip() for x in a.scenarios.split(",") if x.strip()]
        unknown = [x for x in s.scenarios if x not in SCENARIOS]
        if unknown:
            p.error(f"unknown scenario(s) {', '.join(unknown)}; known: {', '.join(SCENARIOS)}")
        s.scenarios = [x for x in SCENARIOS if x in s.scenarios]
    else:
        s.scenarios = ["status"] if a.smoke else list(SCENARIOS)
    s.idle_connections = a.idle_connections or (1000 if a.quick else 10000)
    s.ready_runs = 3 if (a.quick or a.smoke) else 10
    s.ready_warmup = 0 if (a.quick or a.smoke) else 1
    s.reloads = 1 if a.quick else 3
    s.reload_duration = max(3, s.duration) if a.quick else max(15, s.duration)
    s.wrk_threads = 2
    s.h2_clients, s.h2_streams = 32, 8
    s.ready_timeout = 30
    s.results_dir = Path(a.results_dir) if a.results_dir else BENCH / "results"
    cpus = os.cpu_count() or 1
    s.server_cpus = s.client_cpus = None
    if a.pin:
        if cpus < 2 or not shutil.which("taskset"):
            p.error("--pin needs taskset and at least 2 CPUs")
        s.client_cpus = str(cpus - 1)
        s.server_cpus = "0" if cpus == 2 else f"0-{cpus - 2}"

    def exe(var, default=None):
        v = os.environ.get(var) or default
        if v and not (os.path.isfile(v) and os.access(v, os.X_OK)):
            if os.environ.get(var):
                p.error(f"{var}={v} is not an executable file")
            return None
        return v

    s.frontend_bin = exe("FRONTEND_BIN")
    s.hyper_bin = exe("HYPER_BIN")
    s.edge_bin = exe("EDGE_BIN")
    s.gunicorn = None if a.smoke else exe("GUNICORN", str(BENCH / ".venv" / "bin" / "gunicorn"))
    s.nginx = None if a.smoke else exe("NGINX", shutil.which("nginx") or "/usr/sbin/nginx")
    if a.smoke:
        s.edge_bin = None
    if not s.frontend_bin:
        p.error("FRONTEND_BIN is not set (bench/run sets it after building frontend)")
    return s


# --- report: Markdown and SVG --------------------------------------------------------

def fmt(v, digits=1):
    if v is None:
        return "—"
    if isinstance(v, float):
        return f"{v:,.{digits}f}"
    return f"{v:,}" if isinstance(v, int) else str(v)


def esc(text):
    return str(text).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def svg_panels(title, panels):
    """Horizontal grouped bar charts, one panel under the other.
    panel = (subtitle, unit, series names, [(label, [value per series])])."""
    colours = ["#1d70b8", "#f47738", "#00703c", "#912b88", "#d4351c"]
    width, label_w, right = 760, 230, 110
    plot_w = width - label_w - right
    y = 34
    parts = [f'<text x="10" y="22" font-size="15" font-weight="bold">{esc(title)}</text>']
    for subtitle, unit, series, rows in panels:
        rows = [(label, values) for label, values in rows if any(v is not None for v in values)]
        if not rows:
            continue
        top = max((v for _, values in rows for v in values if v is not None), default=0) or 1
        parts.append(f'<text x="10" y="{y + 16}" font-size="13" fill="#333">{esc(subtitle)}</text>')
        y += 24
        if len(series) > 1:
            lx = label_w
            for i, name in enumerate(series):
                parts.append(f'<rect x="{lx}" y="{y - 4}" width="10" height="10" fill="{colours[i % 5]}"/>'
                             f'<text x="{lx + 14}" y="{y + 5}" font-size="11">{esc(name)}</text>')
                lx += 24 + 7 * len(name)
            y += 16
        bar_h = 12
        for label, values in rows:
            group_h = bar_h * len(series) + 8
            parts.append(f'<text x="{label_w - 8}" y="{y + group_h / 2 + 2}" font-size="12" '
                         f'text-anchor="end">{esc(label)}</text>')
            for i, v in enumerate(values):
                if v is None:
                    continue
                w = max(1.0, plot_w * v / top)
                by = y + i * bar_h
                parts.append(f'<rect x="{label_w}" y="{by}" width="{w:.1f}" height="{bar_h - 2}" '
                             f'fill="{colours[i % 5]}"/>')
                parts.append(f'<text x="{label_w + w + 4:.1f}" y="{by + bar_h - 3}" font-size="10">'
                             f'{esc(fmt(v, 2 if v < 10 else 0))} {esc(unit)}</text>')
            y += group_h + 4
        y += 10
    height = y + 6
    return (f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
            f'viewBox="0 0 {width} {height}" font-family="Helvetica, Arial, sans-serif">'
            f'<rect width="100%" height="100%" fill="white"/>{"".join(parts)}</svg>\n')


def throughput_panels(rows, what="req/s"):
    return [
        (f"throughput ({what}, best run, higher is better)", what, [what],
         [(r["name"], [r.get("rps")]) for r in rows]),
        ("latency percentiles (ms, lower is better)", "ms", ["p50", "p90", "p99"],
         [(r["name"], [r.get("latency_ms", {}).get(p) for p in ("p50", "p90", "p99")]) for r in rows]),
    ]


def throughput_table(rows, label="req/s"):
    lines = [f"| Server | {label} | p50 ms | p90 ms | p99 ms | errors | all runs |", "|---|---:|---:|---:|---:|---:|---|"]
    for r in rows:
        lat = r.get("latency_ms", {})
        lines.append(f"| {r['name']} | {fmt(r['rps'])} | {fmt(lat.get('p50'), 3)} | {fmt(lat.get('p90'), 3)} | "
                     f"{fmt(lat.get('p99'), 3)} | {r.get('errors_total', 0)} | "
                     f"{', '.join(f'{x:.0f}' for x in r.get('all_rps', []))} |")
    return lines


def render(report, svg_dir, svg_rel):
    """The Markdown results section; writes the SVGs into svg_dir."""
    res = report["scenarios"]
    m = report["machine"]
    out = [
        f"Run **{report['timestamp_utc']}** (`{report['mode']}` mode), git `{(report['git']['revision'] or '?')[:10]}`"
        f"{' (dirty tree)' if report['git']['dirty'] else ''}; {m['nproc']} CPUs ({m['cpu_model'] or '?'}), "
        f"Linux {m['kernel']}; load average before {' '.join(m['loadavg_start'] or [])}, "
        f"after {' '.join(m['loadavg_end'] or [])}; CPU busy with other work before the run: "
        f"{m['cpu_busy_pct_before']} %. Results file: `bench/results/{report['file']}`.",
        "",
        "### Targets",
        "",
        "| Target | Measured | Threshold | Met |",
        "|---|---:|---:|:---:|",
    ]
    for t in report["targets"]:
        met = {True: "✅ met", False: "❌ not met", None: "— not measured"}[t["met"]]
        out.append(f"| {t['target']} | {fmt(t['value'], 3)} {t['unit']} | {t['op']} {fmt(t['threshold'], 3)} | {met} |")
    out.append("")

    def header(sid):
        r = res.get(sid)
        if r is None:
            return None
        out.extend([f"### {TITLES[sid]}", ""])
        if r["status"] != "ok":
            out.extend([f"Not measured: {r['status']} — {r.get('reason', '').splitlines()[0] if r.get('reason') else ''}", ""])
            return None
        return r

    def plot(sid, title, panels):
        svg_dir.mkdir(parents=True, exist_ok=True)
        (svg_dir / f"{sid}.svg").write_text(svg_panels(title, panels))
        out.extend([f"![{title}]({svg_rel}/{sid}.svg)", ""])

    def notes(r):
        for n in r.get("notes", []):
            out.append(f"- {n}")
        if r.get("notes"):
            out.append("")

    r = header("status")
    if r:
        out.extend([f"{r['tool']}, {r['duration_s']} s × {r['rounds']} round(s) per server, best run shown.", ""])
        plot("status", "GET /_status, plain HTTP/1.1", throughput_panels(r["rows"]))
        out.extend(throughput_table(r["rows"]))
        out.extend(["", "Ratios (best runs): " + ", ".join(f"{k} **{v}**" for k, v in r["ratios"].items()), ""])
        if any(x is not None for x in r.get("frontend_busiest_worker_share", [])):
            out.extend(["Share of each frontend run's requests served by its busiest worker (from "
                        "`wharf_worker_requests_total`; 0.5 is an even split between 2 workers): " +
                        ", ".join(fmt(x, 2) for x in r["frontend_busiest_worker_share"]) + ".", ""])
        if r.get("frontend_over_bare_hyper_median_of_rounds") is not None:
            out.extend([f"frontend/bare-hyper as the median of the per-round ratios (each round's frontend run over "
                        f"the same round's bare-hyper run): {r['frontend_over_bare_hyper_median_of_rounds']}.", ""])
        notes(r)
    r = header("metrics-overhead")
    if r:
        out.extend([f"{r['tool']}, {r['status_runs']['duration_s']} s × {r['status_runs']['rounds']} round(s) per instance, "
                    "order mirrored every round; two frontend instances side by side, one with `WHARF_METRICS=false`.",
                    ""])
        rows = r["status_runs"]["rows"] + [dict(row, name=f"{row['name']} {r['traces']['path']}")
                                       for row in r["traces"]["runs"]["rows"]]
        plot("metrics-overhead", "Instrumentation cost (frontend)", throughput_panels(rows))
        out.extend(throughput_table(rows))
        out.extend(["", f"`/_status` metrics on / off, median of the per-round ratios: "
                        f"**{r['on_over_off_median_of_rounds']}** (cost {r['cost_pct']} %; best runs "
                        f"{r['on_over_off_best_runs']}); server CPU per request (median of the runs, µs): "
                        f"{', '.join(f'{k} {fmt(v)}' for k, v in r['cpu_us_per_request'].items())} ({r['cpu_cost_pct']} %). Through the app (`{r['traces']['path']}`), traces on "
                        f"(every request sampled, OTLP/HTTP to an in-harness sink: {r['traces']['exports']} exports, "
                        f"{fmt(r['traces']['exported_bytes'] / MB)} MB) / off: **{r['traces']['on_over_off_median_of_rounds']}** "
                        f"(cost {r['traces']['cost_pct']} %); server CPU per request (µs): "
                        f"{', '.join(f'{k} {fmt(v)}' for k, v in r['traces']['cpu_us_per_request'].items())} "
                        f"({r['traces']['cpu_cost_pct']} %).", ""])
        notes(r)
    r = header("accept")
    if r:
        out.extend([f"{r['tool']}, {r['duration_s']} s × {r['rounds']} round(s) per layout, best run shown. "
                    "`reuseport N×T` = `WHARF_ACCEPT=reuseport`, N workers of T tokio threads.", ""])
        plot("accept", "frontend worker layouts, GET /_status", throughput_panels(r["rows"]))
        out.extend(throughput_table(r["rows"]))
        out.extend(["", "Ratios (best runs): " + ", ".join(f"{k} **{v}**" for k, v in r["ratios"].items()), "",
                    "| Layout | busiest worker's share of requests, per run (0.5 = even over 2) |", "|---|---|"])
        for row in r["rows"]:
            if row.get("busiest_worker_share"):
                out.append(f"| {row['name']} | {', '.join(fmt(x, 2) for x in row['busiest_worker_share'])} |")
        out.append("")
        if r.get("worker_kill"):
            out.extend(["One worker SIGKILLed halfway through a run of new connections (wrk, 16 connections, "
                        "`Connection: close`):", "",
                        "| Layout | requests | errors | p99 ms | max ms |", "|---|---:|---:|---:|---:|"])
            for k in r["worker_kill"]:
                lat = k.get("latency_ms") or {}
                out.append(f"| {k['name']} | {k.get('requests')} | {k.get('errors_total')} | "
                           f"{fmt(lat.get('p99'))} | {fmt(lat.get('max'))} |")
            out.append("")
        notes(r)
    r = header("landing")
    if r:
        out.extend([f"`{r['path']}` ({r['page_bytes']} bytes of HTML), {r['tool']}.", ""])
        plot("landing", "Landing page vs /_status (frontend)", throughput_panels(r["rows"]))
        out.extend(throughput_table(r["rows"]))
        out.extend(["", f"Landing page / `/_status`: **{r['ratios']['landing/_status']}**", ""])
    r = header("edge-tls")
    if r:
        out.extend([f"Both proxies in front of {r['upstream']}; {r['certificate']} certificate.", "",
                    f"HTTP/1.1: {r['http1']['tool']}; ratio edge/nginx **{r['http1']['ratios']['edge/nginx']}**.", ""])
        panels = throughput_panels(r["http1"]["rows"])
        panels[0] = ("HTTP/1.1 " + panels[0][0], *panels[0][1:])
        panels[1] = ("HTTP/1.1 " + panels[1][0], *panels[1][1:])
        if "http2" in r:
            p2 = throughput_panels(r["http2"]["rows"])
            panels += [("HTTP/2 " + p2[0][0], *p2[0][1:]), ("HTTP/2 " + p2[1][0], *p2[1][1:])]
        plot("edge-tls", "TLS 1.3 reverse proxy: edge vs nginx", panels)
        out.extend(throughput_table(r["http1"]["rows"]))
        if "http2" in r:
            out.extend(["", f"HTTP/2: {r['http2']['tool']}; ratio edge/nginx **{r['http2']['ratios']['edge/nginx']}**.",
                        ""])
            out.extend(throughput_table(r["http2"]["rows"]))
        cpu_rows = [(proto, name, c) for proto in ("http1", "http2")
                    for name, c in r.get(proto, {}).get("cpu_us_per_request", {}).items()]
        if cpu_rows:
            out.extend(["", "The proxy's own CPU time per request (all its processes; median of the runs), "
                            "from /proc/<pid>/stat before and after each run:", "",
                        "| Protocol | Server | user µs | kernel µs | total µs |", "|---|---|---:|---:|---:|"])
            for proto, name, c in cpu_rows:
                label = "HTTP/1.1" if proto == "http1" else "HTTP/2"
                out.append(f"| {label} | {name} | {c['user']} | {c['system']} | {c['total']} |")
        out.append("")
        if "tls_only" in r:
            t = r["tls_only"]
            out.extend([f"Without proxying: both answer `{t['path']}` themselves (same body, same TLS, same wrk "
                        "command), which is what TLS and HTTP alone cost each proxy:", ""])
            out.extend(throughput_table(t["rows"]))
            out.append("")
        budget = r["http1"].get("budget")
        if budget:
            out.extend(["What one proxied HTTP/1.1 request costs the machine (CPU µs, medians of the runs): the "
                        "proxy, the upstream and the load generator share its 2 CPUs, so their sum bounds "
                        "req/s. *Proxying* is the proxy's CPU per proxied request less its CPU per request it "
                        "answers itself (above):", "",
                        "| Server | proxy | upstream | load generator | machine | proxy, answering itself | "
                        "proxying: user | proxying: kernel |",
                        "|---|---:|---:|---:|---:|---:|---:|---:|"])
            for name, b in budget.items():
                out.append(f"| {name} | {b['proxy']} | {b.get('upstream')} | {b.get('load_generator')} | "
                           f"{b.get('machine')} | {b.get('proxy_without_proxying')} | {b.get('proxying_user')} | "
                           f"{b.get('proxying_system')} |")
            out.append("")
        notes(r)
    r = header("handshakes")
    if r:
        out.extend([r["method"] + ".", ""])
        panels = []
        for kind in ("ecdsa", "rsa"):
            panels.append((f"{kind.upper()}: new handshakes/s (higher is better)", "/s", ["handshakes/s"],
                           [(row["name"], [row["rps"]]) for row in r[kind]["rows"]]))
        plot("handshakes", "New TLS 1.3 handshakes per second", panels)
        out.extend(["| Certificate | Server | handshakes/s | p99 ms | errors | edge/nginx |", "|---|---|---:|---:|---:|---:|"])
        for kind in ("ecdsa", "rsa"):
            for row in r[kind]["rows"]:
                out.append(f"| {kind.upper()} | {row['name']} | {fmt(row['rps'])} | "
                           f"{fmt(row['latency_ms'].get('p99'), 3)} | {row['errors_total']} | "
                           f"{r[kind]['ratios']['edge/nginx'] if row['name'] == 'edge' else ''} |")
        out.append("")
    r = header("resume")
    if r:
        out.extend([r["method"] + ".", ""])
        variants = [(v, label) for v, label in RESUME_VARIANTS if v in r]
        panels = [(f"{label}, {kind.upper()}: req/s (higher is better)", "/s", ["req/s"],
                   [(row["name"], [row["rps"]]) for row in r[v][kind]["rows"]])
                  for v, label in variants for kind in ("ecdsa", "rsa")]
        plot("resume", "Returning clients: a new TLS connection per request, resumption on", panels)
        out.extend(["| Resumption | Certificate | Server | req/s | p99 ms | errors | resumed % | of offered % | "
                    "edge/nginx |", "|---|---|---|---:|---:|---:|---:|---:|---:|"])
        for v, label in variants:
            for kind in ("ecdsa", "rsa"):
                res = r[v][kind]
                for row in res["rows"]:
                    out.append(f"| {label} | {kind.upper()} | {row['name']} | {fmt(row['rps'])} | "
                               f"{fmt(row['latency_ms'].get('p99'), 3)} | {row['errors_total']} | "
                               f"{fmt(res['resumed_pct'].get(row['name']), 2)} | "
                               f"{fmt(res['resumed_pct_of_offered'].get(row['name']), 2)} | "
                               f"{res['ratios']['edge/nginx'] if row['name'] == 'edge' else ''} |")
        out.append("")
        notes(r)
    r = header("idle")
    if r:
        out.extend([r["method"] + ".", ""])
        plot("idle", f"Memory holding {r['connections']} idle TLS connections",
             [("PSS, all processes (MB, lower is better)", "MB", ["baseline", "holding"],
               [(row["name"], [row["baseline_pss_mb"], row["held_pss_mb"]]) for row in r["rows"]])])
        out.extend(["| Server | open | failed | processes | PSS before MB | PSS holding MB | RSS holding MB | KB per connection |",
                    "|---|---:|---:|---:|---:|---:|---:|---:|"])
        for row in r["rows"]:
            out.append(f"| {row['name']} | {row['connections_open']} | {row['connections_failed']} | {row['processes']} | "
                       f"{fmt(row['baseline_pss_mb'])} | {fmt(row['held_pss_mb'])} | {fmt(row['held_rss_mb'])} | "
                       f"{fmt(row['per_connection_kb'])} |")
        out.append("")
    r = header("ratelimit")
    if r:
        notes(r)
        land = r.get("landing")
        if land:
            out.extend([f"The landing page on three frontends, {land['tool']}: the document zone checked in memory, "
                        f"in Redis (a redis-server of its own on loopback; {land['redis_commands_during_runs']} "
                        "Redis commands during the runs), and no limiter; the rate is out of reach, so every "
                        "check passes and only its cost shows.", ""])
            plot("ratelimit", "Landing page: rate-limit check in memory / Redis / off",
                 throughput_panels(land["rows"]))
            out.extend(throughput_table(land["rows"]))
            out.extend(["", "Ratios: " + ", ".join(f"{k} **{v}**" for k, v in land["ratios"].items()), ""])
        if r.get("script"):
            out.extend(["`bench/ratelimit.sh` (wharf-ratelimit's cargo bench and its HTTP example):", "",
                        "| Figure | Value |", "|---|---:|"])
            for key, label in (("in_memory_checks_per_s", "in-memory checks/s (1 core)"),
                               ("redis_check_p50_ms", "Redis check p50 ms (1 in flight)"),
                               ("redis_check_p99_ms", "Redis check p99 ms (1 in flight)"),
                               ("redis_checks_per_s", "Redis checks/s (64 in flight)"),
                               ("redis_benchmark_set_per_s", "redis-benchmark SET/s (64 clients)"),
                               ("redis_checks_over_set", "Redis checks / redis-benchmark SET"),
                               ("http_limiter_on_rps", "HTTP req/s, in-memory limiter on"),
                               ("http_limiter_off_rps", "HTTP req/s, no limiter"),
                               ("http_on_over_off", "limiter on / off")):
                out.append(f"| {label} | {fmt(r.get(key), 3)} |")
            out.append("")
    r = header("rss")
    if r:
        plot("rss", "Resident memory per worker (largest worker)",
             [("RSS of the largest worker (MB, lower is better)", "MB", ["idle", "after load"],
               [(row["name"], [row["idle_max_worker_rss_mb"], row["after_max_worker_rss_mb"]]) for row in r["rows"]])])
        out.extend([f"After load = after {r['load']}.", "",
                    "| Server | workers | largest worker RSS idle MB | after load MB | all PSS idle MB | after load MB |",
                    "|---|---:|---:|---:|---:|---:|"])
        for row in r["rows"]:
            out.append(f"| {row['name']} | {row['workers']} | {fmt(row['idle_max_worker_rss_mb'], 2)} | "
                       f"{fmt(row['after_max_worker_rss_mb'], 2)} | {fmt(row['idle_total_pss_mb'])} | "
                       f"{fmt(row['after_total_pss_mb'])} |")
        out.append("")
    r = header("ready")
    if r:
        plot("ready", "Start to ready (median ms, lower is better)",
             [("spawn to first 2xx on /_status (ms)", "ms", ["median"], [(row["name"], [row["median_ms"]]) for row in r["rows"]])])
        out.extend([f"{r['definition']}; {r['runs']} runs each.", "",
                    "| Server | median ms | min ms | max ms | hyperfine cycle mean ms |", "|---|---:|---:|---:|---:|"])
        for row in r["rows"]:
            hf = row.get("hyperfine_cycle_ms")
            out.append(f"| {row['name']} | {fmt(row['median_ms'])} | {fmt(row['min_ms'])} | {fmt(row['max_ms'])} | "
                       f"{fmt(hf['mean']) + ' ± ' + fmt(hf['stddev']) if hf else '—'} |")
        if r.get("frontend_master_all_workers_ready_ms") is not None:
            out.extend(["", f"frontend's master logged `All workers ready` after "
                            f"**{r['frontend_master_all_workers_ready_ms']} ms** (the scenario (1) instance)."])
        out.append("")
    r = header("reload")
    if r:
        out.extend([f"{r['tool']}, {r['duration_s']} s per run, {r['reloads_per_run']} reload(s) per run, "
                    "evenly spaced.", "",
                    "| Server (signal) | reloads | requests | req/s | errors | non-2xx | socket errors (connect/read/write/timeout) |",
                    "|---|---:|---:|---:|---:|---:|---|"])
        for row in r["rows"]:
            if row.get("status") == "not supported":
                out.append(f"| {row['name']} | — | — | — | not supported | — | {row['note']} |")
                continue
            e = row["errors"]
            out.append(f"| {row['name']} | {row['reloads']} | {fmt(row['requests'])} | {fmt(row['rps'])} | "
                       f"{row['errors_total']} | {e['non_2xx']} | {e['connect']}/{e['read']}/{e['write']}/{e['timeout']} |")
        out.append("")
    if report["warnings"]:
        out.extend(["### Warnings", ""] + [f"- {w}" for w in report["warnings"]] + [""])
    return "\n".join(out)


START, END = "<!-- bench:results:start -->", "<!-- bench:results:end -->"


def write_docs(report):
    doc = ROOT / "docs" / "benchmarks.md"
    section = render(report, ROOT / "docs" / "benchmarks", "benchmarks")
    text = doc.read_text() if doc.exists() else f"# Benchmarks\n\n## Latest results\n\n{START}\n{END}\n"
    if START not in text or END not in text:
        text += f"\n## Latest results\n\n{START}\n{END}\n"
    head, rest = text.split(START, 1)
    _, tail = rest.split(END, 1)
    doc.write_text(f"{head}{START}\n{section}\n{END}{tail}")
    return doc


def console_summary(report):
    lines = ["", "Targets:"]
    for t in report["targets"]:
        met = {True: "MET", False: "NOT MET", None: "not measured"}[t["met"]]
        lines.append(f"  {met:<13} {t['target']}: {fmt(t['value'], 3)} {t['unit']} "
                     f"(needs {t['op']} {fmt(t['threshold'], 3)})")
    for sid, r in report["scenarios"].items():
        if r["status"] != "ok":
            lines.append(f"  {sid}: {r['status']}: {r.get('reason', '').splitlines()[0] if r.get('reason') else ''}")
    status = report["scenarios"].get("status")
    if status and status["status"] == "ok":
        lines += ["", "(1) /_status:"] + [f"  {row['name']:<20} {row['rps']:>11.1f} req/s   p50 "
                                          f"{row['latency_ms'].get('p50', float('nan')):.3f} ms   p99 "
                                          f"{row['latency_ms'].get('p99', float('nan')):.3f} ms"
                                          for row in status["rows"]]
    resume = report["scenarios"].get("resume")
    if resume and resume["status"] == "ok":
        lines += ["", "(4b) returning clients (Connection: close, resumption on):"]
        for v, label in RESUME_VARIANTS:
            for kind in ("ecdsa", "rsa"):
                res = resume.get(v, {}).get(kind)
                if not res:
                    continue
                for row in res["rows"]:
                    lines.append(f"  {label + ' ' + kind.upper():<22} {row['name']:<6} {row['rps']:>9.1f} req/s   "
                                 f"p99 {row['latency_ms'].get('p99', float('nan')):.3f} ms   resumed "
                                 f"{fmt(res['resumed_pct'].get(row['name']), 2)} % (of offered "
                                 f"{fmt(res['resumed_pct_of_offered'].get(row['name']), 2)} %)"
                                 + (f"   edge/nginx {res['ratios']['edge/nginx']}" if row["name"] == "edge" else ""))
    for w in report["warnings"]:
        lines.append(f"WARNING: {w}")
    print("\n".join(lines))


def main(argv):
    settings = parse_settings(argv)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))

    def on_signal(signum, _frame):
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGHUP, on_signal)

    tmp = Path(tempfile.mkdtemp(prefix="wharf-bench."))
    load_start = loadavg()
    busy = cpu_busy_pct()
    mode = "smoke" if settings.smoke else "quick" if settings.quick else "full"
    progress(f"wharf benchmark ({mode}): scenarios {', '.join(settings.scenarios)}; load average "
             f"{' '.join(load_start or [])}; CPUs {busy}% busy with other work")
    if busy >= 20 and not settings.smoke:
        progress(f"WARNING: the CPUs are {busy}% busy with other work: expect noisy figures")
    harness = Harness(settings, tmp)
    try:
        harness.run()
    finally:
        progress("stopping every server")
        stop_all()
        shutil.rmtree(tmp, ignore_errors=True)
    if busy >= 20:
        harness.warnings.append(f"CPUs {busy}% busy with other work before the run; figures are noisy")

    settings.results_dir.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y-%m-%dT%H%M%SZ", time.gmtime())
    name = f"{stamp}{'-smoke' if settings.smoke else ''}.json"
    try:
        uptime = subprocess.run(["uptime"], capture_output=True, text=True, timeout=5).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        uptime = None
    report = {
        "schema": SCHEMA,
        "timestamp_utc": stamp,
        "mode": mode,
        "file": name,
        "git": git_info(),
        "machine": {**machine_info(), "cpu_busy_pct_before": busy, "loadavg_start": load_start,
                    "loadavg_end": loadavg(), "uptime_end": uptime,
                    "note": "load generators and servers share the same CPUs; loopback only"},
        "method": {
            "load_tool": settings.load_tool, "connections": settings.connections,
            "wrk_threads": settings.wrk_threads, "duration_s": settings.duration, "rounds": settings.rounds,
            "warmup_s": settings.warmup,
            "pinning": {"servers": settings.server_cpus, "load": settings.client_cpus} if settings.client_cpus
            else None,
            "selection": "best run per server (highest req/s; latency from that run); rounds alternate, "
                         "mirrored each round",
            "tools": tool_versions(settings) if not settings.smoke else {"python": platform.python_version()},
            "binaries": {"frontend": repo_relative(settings.frontend_bin),
                         "bare-hyper": repo_relative(settings.hyper_bin),
                         "edge": repo_relative(settings.edge_bin),
                         "gunicorn": repo_relative(settings.gunicorn), "nginx": settings.nginx},
        },
        "scenarios": harness.results,
        "targets": harness.targets,
        "warnings": harness.warnings,
    }
    path = settings.results_dir / name
    partial = path.with_suffix(".json.tmp")
    partial.write_text(json.dumps(report, indent=2) + "\n")
    partial.replace(path)
    console_summary(report)
    print(f"\nresults: {os.path.relpath(path)}")
    if settings.docs:
        doc = write_docs(report)
        print(f"report:  {os.path.relpath(doc)}")
    failed = [sid for sid, r in harness.results.items() if r["status"] == "failed"]
    if settings.smoke and failed:
        return 1
    if settings.strict and (failed or any(t["met"] is False for t in harness.targets)):
        return 1
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main(sys.argv[1:]))
    finally:
        stop_all()
