"""(5) idle: the memory edge and nginx take to hold many idle keep-alive TLS
connections (bench/idle_conns.py opens and holds them)."""
import json
import subprocess
import sys
import time
from urllib.parse import urlsplit

from ..common import BENCH, BenchError, mb, progress


class Idle:
    """Scenario (5) idle: a part of `Harness`."""

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
