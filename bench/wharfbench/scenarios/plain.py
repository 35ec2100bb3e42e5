"""Plain HTTP/1.1 scenarios: (1) status, (1b) accept (frontend's worker
layouts), (2) landing and (10) metrics-overhead, with the runner that records
CPU time per request and the on/off summary the last uses."""
import json
import os
import signal
import statistics
import subprocess
import time
from pathlib import Path
from urllib.parse import urlsplit

from ..common import BenchError, progress
from ..load import parse_wrk
from ..procs import children, descendants, http_get


class PlainHttp:
    """Scenarios (1) status, (1b) accept, (2) landing and (10) metrics-overhead: a part of `Harness`."""

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
        (the default sampler, parentbased_always_on: every request of the load
        generator, which sends no traceparent, is sampled; exported to an
        in-harness OTLP sink); then the access log on vs off, frontend's and
        nginx's, in one comparison."""
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
        self.target("traces-overhead", "frontend with traces at the default sampler ≥ 0.95× without (≤ 5 % cost)",
                    result["traces"]["on_over_off_median_of_rounds"], 0.95, ">=", "×",
                    detail="/security.txt, median of the per-round ratios traces-on/traces-off")
        result["access_log"] = self.access_log_overhead(on)
        return result

    def access_log_overhead(self, front_off):
        """/_status with the access log on and off: frontend (`front_off` has it
        off, a second instance its default, on) and nginx (its plain listener,
        and one with a JSON access log of the same fields), four subjects in one
        comparison, order mirrored every round. Each cost is the median of the
        per-round ratios on/off of the same server; the bytes each log grew by
        (warm-up included) over the requests sent say that every line was
        written."""
        front_on = self.server("frontend-access-log")
        subjects = [("frontend access-log-off", front_off.url()), ("frontend access-log-on", front_on.url())]
        servers = {front_off.url(): front_off, front_on.url(): front_on}
        logs = {"frontend access-log-on": front_on.log_path}
        if self.have("nginx"):
            nginx = self.server("nginx")
            logged = f"http://127.0.0.1:{nginx.logged_port}/_status"
            subjects += [("nginx access-log-off", nginx.url()), ("nginx access-log-on", logged)]
            servers.update({nginx.url(): nginx, logged: nginx})
            logs["nginx access-log-on"] = nginx.logs / "access-json.log"
        else:
            self.note("metrics-overhead", f"nginx: not run ({self.missing_reason('nginx')})")
        names = {url: name for name, url in subjects}
        sent = {name: 0 for name, _ in subjects}
        cpu = self.cpu_runner(servers)

        def runner(url, seconds):
            run = cpu(url, seconds)
            sent[names[url]] += run.get("requests") or 0
            return run

        def size(path):
            try:
                return path.stat().st_size
            except OSError:
                return 0
        before = {name: size(path) for name, path in logs.items()}
        runs = self.compare("metrics-overhead", subjects, runner)
        time.sleep(0.5)  # frontend writes its buffered lines within 100 ms
        rows = {row["name"]: row for row in runs["rows"]}
        cpu_us = self.cpu_per_request(runs["rows"])
        out = {"runs": runs, "log_bytes_per_request": {}, "servers": {}}
        for name, path in logs.items():
            grown = size(path) - before[name]
            out["log_bytes_per_request"][name] = round(grown / sent[name], 1) if sent[name] else None
        for server in ("frontend", "nginx"):
            on, off = rows.get(f"{server} access-log-on"), rows.get(f"{server} access-log-off")
            if not on or not off:
                continue
            paired = [x["rps"] / y["rps"] for x, y in zip(on["runs"], off["runs"]) if y["rps"]]
            ratio = round(statistics.median(paired), 3) if paired else None
            c_on, c_off = cpu_us.get(on["name"]), cpu_us.get(off["name"])
            out["servers"][server] = {
                "on_over_off_median_of_rounds": ratio,
                "cost_pct": round((1 - ratio) * 100, 1) if ratio is not None else None,
                "on_over_off_best_runs": round(on["rps"] / off["rps"], 3) if off["rps"] else None,
                "cpu_us_per_request": {"off": c_off, "on": c_on},
                "cpu_cost_pct": round((c_on / c_off - 1) * 100, 1) if c_on and c_off else None,
            }
        front = out["servers"].get("frontend", {})
        nginx_cost = out["servers"].get("nginx", {}).get("cost_pct")
        self.target("access-log", "frontend /_status with the access log ≥ 0.90× without (≤ 10 % cost)",
                    front.get("on_over_off_median_of_rounds"), 0.90, ">=", "×",
                    detail="median of the per-round ratios access-log-on/access-log-off")
        self.target("access-log-nginx", "frontend's access-log cost < nginx's, same run (%)", front.get("cost_pct"),
                    nginx_cost, "<", "%", detail="cost = 1 − median of the per-round ratios on/off")
        return out

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
