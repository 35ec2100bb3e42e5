"""The machine a run measures on: how busy its CPUs were before the run, its
load average, CPU model and kernel, the tools' versions and the git revision."""
import os
import platform
import shutil
import subprocess
import time

from .common import ROOT


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
