"""Scenarios about the servers' lives rather than their throughput: (7) rss,
memory per worker idle and after load; (8) ready, spawn to first answer; (9)
reload, errors while reloading (and upgrading the binary) under load."""
import json
import os
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import time

from ..common import BENCH, BenchError, mb, progress
from ..load import parse_wrk
from ..procs import Server, children, free_port, group_master, memory_of, server_env


class Lifecycle:
    """Scenarios (7) rss, (8) ready and (9) reload: a part of `Harness`."""

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
                # Plain, and with TLS on edge's certificate: edge is compared
                # with the second (both load a key and answer over TLS).
                for label, tls in (("nginx", False), ("nginx-tls", True)):
                    port = free_port() if tls else port
                    prefix = self.tmp / f"{label}-ready"
                    (prefix / "logs").mkdir(parents=True, exist_ok=True)
                    conf = prefix / "nginx.conf"
                    cert, key = self.ensure_certs()["ecdsa"]
                    listen = (f"listen 127.0.0.1:{port} ssl; ssl_certificate {cert}; ssl_certificate_key {key};"
                              if tls else f"listen 127.0.0.1:{port};")
                    conf.write_text(
                        "worker_processes auto;\n" + ("user root;\n" if os.getuid() == 0 else "") +
                        f"pid {prefix}/nginx.pid;\nerror_log {prefix}/logs/error.log warn;\n"
                        "events { worker_connections 1024; }\nhttp { access_log off;\n" +
                        "".join(f"  {d}_temp_path {prefix}/{d};\n" for d in ("client_body", "proxy", "fastcgi",
                                                                                "uwsgi", "scgi")) +
                        f"  server {{ {listen} location = /_status {{ return 200 'ok'; }} }}\n}}\n")
                    subjects.append((label, [self.s.nginx, "-p", str(prefix), "-c", str(conf), "-e", "stderr",
                                             "-g", "daemon off;"], {}, port, tls))
                continue
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
        edge = next((r["median_ms"] for r in rows if r["name"] == "edge"), None)
        nginx_tls = next((r["median_ms"] for r in rows if r["name"] == "nginx-tls"), None)
        if edge is not None and nginx_tls:
            self.target("edge-ready", "edge start to first 200 <= nginx's (TLS both, worker processes both)",
                        round(edge / nginx_tls, 3), 1.0, "<=", "x",
                        f"edge {edge} ms, nginx {nginx_tls} ms, medians")
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
