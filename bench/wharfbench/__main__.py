"""python3 -m wharfbench: the options and the run, from settings to results file.

bench/run installs the peers and builds the binaries, then runs this with bench/
on PYTHONPATH; run it directly only with the binaries in the environment
(FRONTEND_BIN, HYPER_BIN, EDGE_BIN, GUNICORN, NGINX). It starts every server
itself on loopback, runs each selected scenario with a bounded duration, stops
every server it started, and writes bench/results/<UTC date-time>.json plus
(unless --no-docs) the results section of docs/benchmarks.md and its SVG plots
under docs/benchmarks/.

See bench/README.md for the scenarios, the method and the results format.
"""
import argparse
import json
import os
import platform
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from .common import BENCH, SCENARIOS, SCHEMA, progress, repo_relative
from .harness import Harness
from .machine import cpu_busy_pct, git_info, loadavg, machine_info, tool_versions
from .procs import stop_all
from .report import console_summary, write_docs

# `bench/run --help`, which bench/run prints by running `python3 -m wharfbench --help`.
USAGE = """\
Usage: bench/run [options]

  --quick              every scenario, 2 s runs, 1 round, 1000 idle connections
                       (under 2 minutes once built and installed)
  (default)            full run: 10 s runs, 2 rounds, 10000 idle connections
  --smoke              seconds long: scenario (1) on frontend only (plus
                       bare-hyper when HYPER_BIN is set), python3 load loop,
                       1 s; never builds, installs or touches docs/
  --scenarios LIST     comma-separated subset of: status, accept,
                       metrics-overhead, rss, ready, reload, landing, edge-tls,
                       handshakes, resume, idle, ratelimit, recipient
  --duration N         N seconds per measured run
  --rounds N           measured rounds per server (mirrored order)
  --warmup N           discarded warm-up seconds per server
  --connections N      load-generator connections (default 64)
  --idle-connections N connections held open in scenario (5)
  --load-tool T        wrk (default when installed) or python
  --pin                pin servers to CPUs 0..n-2 and load generators to the
                       last CPU (taskset); off by default, see docs/benchmarks.md
  --results-dir DIR    where the JSON goes (default bench/results)
  --no-docs            do not rewrite docs/benchmarks.md and its plots
  --no-build           use the binaries already in target/release
  --no-install         install nothing; scenarios whose tools are missing are
                       reported as not measured
  --strict             exit 1 when a target is not met or a scenario failed
  --no-ratelimit-script  scenario (6) without bench/ratelimit.sh (which builds
                       a cargo bench in release first)
  -h, --help           this text

Environment:
  FRONTEND_BIN, EDGE_BIN, HYPER_BIN  binaries to measure (each skips its build)
  STUB_BIN                           the stub APIs of scenario recipient
                                     (bench/hello's stub-apis)
  GUNICORN, NGINX                    peer executables (default bench/.venv's
                                     gunicorn, the system nginx)
  CARGO_TARGET_DIR                   honoured when locating built binaries
"""


class Usage(argparse.Action):
    """-h, --help: USAGE, then exit 0."""

    def __call__(self, parser, namespace, values, option_string=None):
        print(USAGE, end="")
        parser.exit()


def forget_bench_path():
    """bench/run puts bench/ on PYTHONPATH to find this package: take it off again,
    so that the servers and tools a run starts get the environment they always got."""
    entries = os.environ.get("PYTHONPATH", "").split(os.pathsep)
    kept = [p for p in entries if p and Path(p).resolve() != BENCH]
    if kept:
        os.environ["PYTHONPATH"] = os.pathsep.join(kept)
    else:
        os.environ.pop("PYTHONPATH", None)


def parse_settings(argv):
    p = argparse.ArgumentParser(prog="bench/run", description="wharf vs nginx, gunicorn and bare hyper.",
                                add_help=False)
    p.add_argument("-h", "--help", action=Usage, nargs=0, dest=argparse.SUPPRESS)
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
    p.add_argument("--no-ratelimit-script", action="store_true")
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
    s.ratelimit_script = not a.no_ratelimit_script
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
    s.stub_bin = exe("STUB_BIN")
    s.gunicorn = None if a.smoke else exe("GUNICORN", str(BENCH / ".venv" / "bin" / "gunicorn"))
    s.nginx = None if a.smoke else exe("NGINX", shutil.which("nginx") or "/usr/sbin/nginx")
    if a.smoke:
        s.edge_bin = None
    if not s.frontend_bin:
        p.error("FRONTEND_BIN is not set (bench/run sets it after building frontend)")
    return s


def main(argv):
    forget_bench_path()
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
                         "stub-apis": repo_relative(settings.stub_bin),
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
