"""(6) ratelimit: the landing page with the document zone checked in memory, in
Redis and not at all; and bench/ratelimit.sh's figures."""
import re
import shutil
import subprocess

from ..common import BENCH, ROOT, BenchError, progress
from ..peers import redis_commands


class Ratelimit:
    """Scenario (6) ratelimit: a part of `Harness`."""

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
