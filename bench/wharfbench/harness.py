"""`Harness`: the servers (peers.Peers) and the scenario families
(scenarios/) of one run. It runs the selected scenarios in order and holds what
they measure: results, targets, warnings and notes. `compare` is the measuring
loop of every throughput scenario (warm-up, rounds in mirrored order)."""
import statistics
import time

from .common import TITLES, BenchError, progress
from .load import Load
from .peers import Peers
from .report import TARGETS
from .scenarios import EdgeTls, Idle, Lifecycle, PlainHttp, Ratelimit, Recipient


class Harness(Peers, PlainHttp, EdgeTls, Idle, Ratelimit, Lifecycle, Recipient):
    """One run: its servers, its scenarios, and what they measured."""

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

    def note(self, scenario, text):
        self.notes.setdefault(scenario, []).append(text)

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
        if value is None or threshold is None:
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
