"""(6) ratelimit: the landing page with the document zone checked in memory, in
Redis and not at all; and bench/ratelimit.sh's figures."""
import re
import shutil
import statistics
import subprocess
from pathlib import Path

from ..common import BENCH, ROOT, BenchError, progress
from ..peers import redis_commands
from ..procs import http_get


def process_cpu_seconds(pid):
    """utime + stime of one process, in seconds (/proc/<pid>/stat)."""
    import os
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return 0.0


def redis_check_histogram(server):
    """{upper bound in seconds: cumulative count} of frontend's Redis
    round-trip histogram (wharf_ratelimit_redis_seconds), summed over its
    label sets, from the admin /metrics; {} when it is not there."""
    answer = http_get(f"http://127.0.0.1:{server.admin}/metrics")
    if not answer or answer[0] != 200:
        return {}
    out = {}
    for m in re.finditer(r'^wharf_ratelimit_redis_seconds_bucket\{[^}]*le="([^"]+)"[^}]*\}\s+(\S+)',
                         answer[2].decode(), re.M):
        bound = float("inf") if m.group(1) == "+Inf" else float(m.group(1))
        out[bound] = out.get(bound, 0) + float(m.group(2))
    return out


def histogram_quantiles(before, after):
    """p50/p99 (ms) of the checks between two histogram readings, linear
    within a bucket, and the share of checks at or under 0.5 ms."""
    if not after:
        return {}
    bounds = sorted(after)
    counts = [after[b] - before.get(b, 0) for b in bounds]
    total = counts[-1]
    if total <= 0:
        return {"checks": 0}

    def quantile(q):
        rank = q * total
        lower, below = 0.0, 0.0
        for bound, cumulative in zip(bounds, counts):
            if cumulative >= rank:
                if bound == float("inf"):
                    return None
                inside = cumulative - below
                return round((lower + (bound - lower) * ((rank - below) / inside if inside else 1)) * 1000, 3)
            lower, below = bound, cumulative
        return None
    at_half_ms = next((c for b, c in zip(bounds, counts) if abs(b - 0.0005) < 1e-9), None)
    return {"checks": int(total), "p50_ms": quantile(0.5), "p99_ms": quantile(0.99),
            "share_le_0_5ms": round(at_half_ms / total, 4) if at_half_ms is not None else None,
            "buckets_ms": [b * 1000 for b in bounds if b != float("inf")]}


class Ratelimit:
    """Scenario (6) ratelimit: a part of `Harness`."""

    def scenario_ratelimit(self):
        result = {}
        if self.s.load_tool == "wrk" and shutil.which("redis-server"):
            result["landing"] = self.ratelimit_landing()
        else:
            self.note("ratelimit", "landing page with the limiter in memory / Redis / off: not run "
                                   "(needs wrk and redis-server)")
        if not getattr(self.s, "ratelimit_script", True):
            self.note("ratelimit", "bench/ratelimit.sh: not run (--no-ratelimit-script)")
        elif self.s.quick and not self.s.explicit_scenarios:
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
        redis_url = dict(subjects)["limiter in Redis"]
        sent = {"requests": 0}

        def runner(url, seconds):
            run = self.load.http(url, seconds)
            if url == redis_url:
                sent["requests"] += run.get("requests") or 0
            return run
        before = redis_commands(redis.port)
        cpu_before = process_cpu_seconds(redis.pid)
        histogram_before = redis_check_histogram(servers["limiter in Redis"])
        result = self.compare("ratelimit landing", subjects, runner)
        histogram_after = redis_check_histogram(servers["limiter in Redis"])
        cpu_used = process_cpu_seconds(redis.pid) - cpu_before
        after = redis_commands(redis.port)
        result["redis_commands_during_runs"] = None if before is None or after is None else after - before
        if not result["redis_commands_during_runs"]:
            self.warnings.append("ratelimit: the Redis-backed frontend sent no commands to Redis")
        rps = {row["name"]: row["rps"] for row in result["rows"]}
        none = rps.get("no limiter")
        result["ratios"] = {f"{k}/no limiter": round(v / none, 3) for k, v in rps.items() if none and k != "no limiter"}
        rows = {row["name"]: row for row in result["rows"]}
        paired = [x["rps"] / y["rps"] for x, y in zip(rows["limiter in Redis"]["runs"], rows["no limiter"]["runs"])
                  if y["rps"]]
        result["redis_over_none_median_of_rounds"] = round(statistics.median(paired), 3) if paired else None
        # The Redis frontend's requests (warm-up included) each made one check.
        result["redis_requests"] = sent["requests"]
        result["redis_cpu_s"] = round(cpu_used, 3)
        commands = result["redis_commands_during_runs"]
        result["redis_cpu_us_per_command"] = round(cpu_used * 1e6 / commands, 2) if commands else None
        # total_commands_processed counts the commands the check's script runs too.
        result["redis_commands_per_check"] = round(commands / sent["requests"], 2) if commands and sent["requests"] \
            else None
        result["redis_cpu_us_per_check"] = round(cpu_used * 1e6 / sent["requests"], 2) if sent["requests"] else None
        result["redis_check_latency"] = histogram_quantiles(histogram_before, histogram_after)
        result["tool"] = self.tool_line()
        self.target("redis-limiter", "landing page with the Redis limiter ≥ 0.85× no limiter (≤ 15 % cost)",
                    result["redis_over_none_median_of_rounds"], 0.85, ">=", "×",
                    detail="median of the per-round ratios limiter in Redis / no limiter")
        self.target("redis-p99-load", "Redis check p99 under the landing load ≤ 0.5 ms (frontend's histogram)",
                    result["redis_check_latency"].get("p99_ms"), 0.5, "<=", "ms",
                    detail="wharf_ratelimit_redis_seconds, interpolated within its buckets")
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
