"""The load generators: wrk, h2load and a python3 keep-alive loop (the smoke
test's), the parsing of their output, and latency percentiles."""
import http.client
import math
import re
import shlex
import statistics
import subprocess
import threading
import time
from urllib.parse import urlsplit

from .common import BenchError


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

    def wrk_argv(self, url, duration, connections=None, headers=(), script=None):
        argv = self.client_prefix() + [
            "wrk", "--latency", f"-t{self.s.wrk_threads}", f"-c{connections or self.s.connections}",
            f"-d{duration}s", "--timeout", "5s",
        ]
        for h in headers:
            argv += ["-H", h]
        if script:
            argv += ["-s", str(script)]
        return argv + [url]

    def wrk(self, url, duration, connections=None, headers=(), script=None):
        """One wrk run; `script`: a Lua file that makes the requests (wrk -s)."""
        argv = self.wrk_argv(url, duration, connections, headers, script)
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
