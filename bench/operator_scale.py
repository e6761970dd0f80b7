"""Operator at scale, against the faithful test cluster (tests/support), in one run:

1. ratio: kubetune's create->Job p99 for N FineTuneJobs created at once, divided
   by that of a minimal Kopf controller (bench/minimal_kopf.py: one Job per
   resource, nothing else) on the same emulated API server, same burst, same
   machine, one after the other (goal <= 1.5);
2. API requests per job until its Job exists: every request the operator made
   for that job (its name or its objects' names, Events about it included) up
   to the moment the API server stored the job's batch Job (goal <= 6);
3. requests per resync with M finished FineTuneJobs: the operator started on M
   Succeeded jobs with a short resync interval; once start-up is quiet, every
   request it makes during a few resync intervals, per interval (goal 0);
4. the operator's peak RSS with M jobs (start-up and resyncs; goal < 200 MiB).

Latency is measured inside the emulator (FineTuneJob stored -> Job stored); the
emulator runs in this process with Python's garbage collector off during each
latency arm (its pauses stalled the emulated API server for both controllers).
Both controllers run as their own processes (`kubetune operator`, `kopf run`),
logged in by kubeconfig, so their memory is their own. The numbers are printed
whether the goals are met or not. On a busy 2-core machine the absolute
latencies say more about the machine than the operator; the ratio, the request
counts and RSS do not.

    .venv/bin/python bench/operator_scale.py [--jobs 500] [--finished 2000] [--resync 5]
"""
from __future__ import annotations

import argparse
import collections
import gc
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import psutil

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from support.cluster import EmulatedCluster, wait_for  # noqa: E402
from support.emulator import Semantics  # noqa: E402
from support.manifests import job_manifest  # noqa: E402

GOALS = {"ratio": 1.5, "requests_per_job": 6.0, "requests_per_resync": 0.0, "peak_rss_mib": 200.0}


def percentile(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, max(0, int(round(q * (len(values) - 1)))))]


class RssSampler(threading.Thread):
    def __init__(self, pid: int):
        super().__init__(daemon=True)
        self.proc = psutil.Process(pid)
        self.peak = 0
        self.stop_flag = threading.Event()

    def run(self) -> None:
        while not self.stop_flag.is_set():
            try:
                self.peak = max(self.peak, self.proc.memory_info().rss)
            except psutil.Error:
                return
            time.sleep(0.02)

    def stop(self) -> int:
        self.stop_flag.set()
        self.join()
        return self.peak


class Controller:
    """A controller process (kubetune's operator or the minimal Kopf one) on one namespace."""

    def __init__(self, kind: str, cluster: EmulatedCluster, namespace: str, workdir: str, extra_env: dict[str, str] | None = None):
        self.cluster, self.namespace = cluster, namespace
        kubeconfig = cluster.write_kubeconfig(os.path.join(workdir, f"kubeconfig-{namespace}"))
        env = dict(os.environ, KUBECONFIG=kubeconfig, KUBETUNE_LOG_FORMAT="json", OMP_NUM_THREADS="1", **(extra_env or {}))
        if kind == "kubetune":
            cmd = [sys.executable, "-m", "kubetune_operator.cli", "operator", "--namespace", namespace, "--standalone",
                   "--metrics-port", "0", "--health-port", "0"]
            self.watched = {"finetunejobs", "jobs", "pods"}
        else:
            cmd = [sys.executable, "-m", "kopf", "run", "--standalone", "--namespace", namespace, "--quiet",
                   str(ROOT / "bench" / "minimal_kopf.py")]
            self.watched = {"finetunejobs"}
        self.log = open(os.path.join(workdir, f"{kind}-{namespace}.log"), "w")
        self.proc = subprocess.Popen(cmd, env=env, stdout=self.log, stderr=subprocess.STDOUT)
        self.sampler = RssSampler(self.proc.pid)
        self.sampler.start()

    def calls(self) -> list[Any]:
        return [c for c in self.cluster.operator_calls() if c.namespace == self.namespace]

    def wait_watching(self) -> None:
        def watching() -> bool:
            if self.proc.poll() is not None:
                raise RuntimeError(f"controller exited with {self.proc.returncode}; see {self.log.name}")
            return self.watched <= {c.resource for c in self.calls() if c.verb == "watch"}
        wait_for(watching, timeout=120, interval=0.05, message=f"controller watching {self.namespace}")
        time.sleep(0.5)  # the initial lists settle

    def wait_quiet(self, quiet_s: float, timeout: float) -> None:
        """Until the controller made no request (watches aside) for quiet_s seconds."""
        start = time.monotonic()
        while time.monotonic() < start + timeout:
            last = max((c.t for c in self.calls() if c.verb != "watch"), default=start)
            if time.monotonic() - max(last, start) >= quiet_s:
                return
            time.sleep(0.2)

    def stop(self) -> int:
        peak = self.sampler.stop()
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.log.close()
        return peak


def burst(cluster: EmulatedCluster, namespace: str, n: int, pace_s: float = 0.0) -> list[str]:
    """N creates back to back, or (pace_s > 0) the i-th at i * pace_s after the first, so both arms get the
    same arrival schedule (as long as the client keeps up with it: the printed burst durations say)."""
    names = [f"job-{i:05d}" for i in range(n)]
    t0 = time.perf_counter()
    for i, name in enumerate(names):
        if pace_s > 0:
            delay = t0 + i * pace_s - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
        cluster.create(job_manifest(name, namespace, distributed={"nodes": 2, "gpusPerNode": 8}))
    return names


def latency_arm(kind: str, cluster: EmulatedCluster, n: int, workdir: str, pace_s: float = 0.0) -> dict[str, Any]:
    ns = f"bench-{kind}"
    cluster.ensure_namespace(ns)
    ctl = Controller(kind, cluster, ns, workdir)
    try:
        ctl.wait_watching()
        # The emulated API server lives in this process. Python's collector paused it whole during a
        # burst (full collections over every stored object: up to 0.14 s, longer in the second arm,
        # whose store holds the first arm's objects too), stalling both controllers' requests and
        # watch events alike, which a real API server does not do. Off while an arm runs, for both arms.
        gc.collect()
        gc.disable()
        try:
            names = burst(cluster, ns, n, pace_s)
            at = cluster.emulator.created_at
            wait_for(lambda: all(("jobs", ns, f"{name}-a1") in at for name in names), timeout=1800, interval=0.5,
                     message=f"{n} Jobs ({kind})")
            time.sleep(1.0)  # trailing requests (Kopf posts events in the background)
        finally:
            gc.enable()
    finally:
        peak = ctl.stop()
    latencies = [at[("jobs", ns, f"{name}-a1")] - at[("finetunejobs", ns, name)] for name in names]
    first = min(at[("finetunejobs", ns, name)] for name in names)
    out: dict[str, Any] = {"p50": percentile(latencies, 0.5), "p99": percentile(latencies, 0.99), "max": max(latencies),
                           "peak_rss_mib": peak / 2**20,
                           # the burst itself (first to last FineTuneJob stored), and first FineTuneJob to last Job
                           "burst_s": max(at[("finetunejobs", ns, name)] for name in names) - first,
                           "last_job_s": max(at[("jobs", ns, f"{name}-a1")] for name in names) - first}
    if kind == "kubetune":
        out.update(requests_until_job(cluster, ns, names))
    return out


def requests_until_job(cluster: EmulatedCluster, ns: str, names: list[str]) -> dict[str, Any]:
    at = cluster.emulator.created_at
    calls = [c for c in cluster.operator_calls() if c.namespace == ns and c.verb != "watch"]
    by_name: dict[str, list[Any]] = collections.defaultdict(list)
    for c in calls:
        if c.name:
            by_name[c.name[:9]].append(c)  # "job-00042" and its objects "job-00042-..."
    events = collections.defaultdict(list)
    for ev in cluster.list("Event", ns):
        events[(ev.get("involvedObject") or {}).get("name")].append(at.get(("events", ns, ev["metadata"]["name"]), 0.0))
    per_job, breakdown = [], collections.Counter()
    for name in names:
        mine_all = [c for c in by_name[name] if c.name == name or c.name.startswith(name + "-")]
        # Up to and including the request whose answer was the Job (its 201, or the 409 adopting it).
        job_calls = [c for c in mine_all if c.verb == "create" and c.resource == "jobs" and c.status in (201, 409)]
        done = job_calls[0].t if job_calls else at[("jobs", ns, f"{name}-a1")]
        mine = [c for c in mine_all if c.t <= done]
        evs = [t for t in events[name] if t <= done]
        per_job.append(len(mine) + len(evs))
        breakdown.update(f"{c.verb} {c.resource}{'/' + c.subresource if c.subresource else ''}" for c in mine)
        breakdown["create events"] += len(evs)
    return {"requests_per_job": sum(per_job) / len(names), "requests_per_job_max": max(per_job),
            "breakdown": {k: v / len(names) for k, v in breakdown.most_common()}}


def finished_arm(cluster: EmulatedCluster, m: int, resync: float, workdir: str) -> dict[str, Any]:
    ns = "bench-finished"
    cluster.ensure_namespace(ns)
    now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    for i in range(m):
        name = f"done-{i:05d}"
        cluster.create(job_manifest(name, ns))
        cond = {"type": "Succeeded", "status": "True", "reason": "Completed", "message": "all 2 pods of attempt 1 finished",
                "lastTransitionTime": now, "observedGeneration": 1}
        cluster.patch_status("FineTuneJob", ns, name, {
            "phase": "Succeeded", "reason": "Completed", "message": cond["message"], "attempt": 1, "restarts": 0,
            "startTime": now, "completionTime": now, "observedGeneration": 1, "conditions": [cond]})
    ctl = Controller("kubetune", cluster, ns, workdir, {"KUBETUNE_RESYNC_SECONDS": str(int(resync))})
    try:
        ctl.wait_watching()
        t0 = time.monotonic()
        ctl.wait_quiet(quiet_s=max(2.0, resync / 2), timeout=600)
        startup_s = time.monotonic() - t0
        startup_requests = len([c for c in ctl.calls() if c.verb != "watch"])
        w0 = time.monotonic()
        window = 3 * resync
        time.sleep(window)
        during = [c for c in ctl.calls() if c.verb != "watch" and w0 <= c.t <= w0 + window]
    finally:
        peak = ctl.stop()
    kinds = collections.Counter(f"{c.verb} {c.resource}{'/' + c.subresource if c.subresource else ''}" for c in during)
    return {"requests_per_resync": len(during) / 3, "resync_breakdown": dict(kinds.most_common(5)),
            "startup_requests": startup_requests, "startup_s": startup_s, "peak_rss_mib": peak / 2**20}


def measure(jobs: int = 500, finished: int = 2000, resync: float = 5.0, pace_ms: float = 0.0,
            kubetune_first: bool = False) -> dict[str, Any]:
    # Lenient, as the recorded numbers were measured: the emulator's own Job controller and GC would load the same 2 cores.
    with tempfile.TemporaryDirectory() as workdir, EmulatedCluster(keep_history=False, semantics=Semantics.lenient()) as cluster:
        # The second arm's API server also holds the first arm's objects: --kubetune-first swaps them.
        if kubetune_first:
            kt = latency_arm("kubetune", cluster, jobs, workdir, pace_ms / 1000)
            kopf_arm = latency_arm("kopf", cluster, jobs, workdir, pace_ms / 1000)
        else:
            kopf_arm = latency_arm("kopf", cluster, jobs, workdir, pace_ms / 1000)
            kt = latency_arm("kubetune", cluster, jobs, workdir, pace_ms / 1000)
        fin = finished_arm(cluster, finished, resync, workdir)
    return {"jobs": jobs, "finished": finished, "resync": resync, "pace_ms": pace_ms, "kubetune_first": kubetune_first,
            "kopf": kopf_arm, "kubetune": kt, "finished_arm": fin,
            "ratio": kt["p99"] / kopf_arm["p99"] if kopf_arm["p99"] > 0 else float("inf"),
            "requests_per_job": kt["requests_per_job"], "requests_per_resync": fin["requests_per_resync"],
            "peak_rss_mib": fin["peak_rss_mib"]}


def report(r: dict[str, Any]) -> str:
    def goal(key: str, value: float, op: str) -> str:
        ok = value <= GOALS[key] if op == "<=" else value < GOALS[key]
        return f"goal {op} {GOALS[key]:g}: {'met' if ok else 'NOT met'}"

    kt, kopf_arm, fin = r["kubetune"], r["kopf"], r["finished_arm"]
    pacing = f"one every {r['pace_ms']:g} ms" if r["pace_ms"] else "back to back"
    lines = [
        f"ratio: {r['ratio']:.2f}  (create->Job p99, N={r['jobs']}: kubetune {kt['p99']:.2f}s / minimal Kopf "
        f"{kopf_arm['p99']:.2f}s; p50 {kt['p50']:.2f}s / {kopf_arm['p50']:.2f}s; {goal('ratio', r['ratio'], '<=')})",
        f"    the burst of {r['jobs']} creates ({pacing}"
        f"{', kubetune arm first' if r['kubetune_first'] else ''}) took {kt['burst_s']:.2f}s / {kopf_arm['burst_s']:.2f}s; "
        f"last Job {kt['last_job_s']:.2f}s / {kopf_arm['last_job_s']:.2f}s after the first FineTuneJob (kubetune / minimal Kopf)",
        f"requests per job until its Job exists: {r['requests_per_job']:.1f} (max {kt['requests_per_job_max']}; "
        f"{goal('requests_per_job', r['requests_per_job'], '<=')})",
    ]
    lines += [f"    {v:5.2f}  {k}" for k, v in kt["breakdown"].items()]
    lines += [
        f"requests per resync with {r['finished']} finished jobs: {r['requests_per_resync']:.1f} "
        f"(resync {r['resync']:g}s; {goal('requests_per_resync', r['requests_per_resync'], '<=')}); "
        f"start-up: {fin['startup_requests']} requests in {fin['startup_s']:.1f}s",
    ]
    lines += [f"    {v:6d}  {k} (in 3 resyncs)" for k, v in fin["resync_breakdown"].items()]
    lines += [
        f"peak RSS with {r['finished']} jobs: {r['peak_rss_mib']:.0f} MiB ({goal('peak_rss_mib', r['peak_rss_mib'], '<')}); "
        f"with {r['jobs']} starting jobs: kubetune {kt['peak_rss_mib']:.0f} MiB, minimal Kopf {kopf_arm['peak_rss_mib']:.0f} MiB",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--jobs", type=int, default=500, help="FineTuneJobs created at once, per controller")
    ap.add_argument("--finished", type=int, default=2000, help="finished FineTuneJobs for the resync and memory measures")
    ap.add_argument("--resync", type=float, default=5.0, help="KUBETUNE_RESYNC_SECONDS for the finished-jobs measure")
    ap.add_argument("--pace-ms", type=float, default=0.0,
                    help="create the FineTuneJobs on a fixed schedule, one every PACE ms, in both arms (default: back to back)")
    ap.add_argument("--kubetune-first", action="store_true", help="run kubetune's latency arm before the baseline's")
    args = ap.parse_args(argv)
    print(f"machine: {os.cpu_count()} cores, load average {', '.join(f'{x:.1f}' for x in os.getloadavg())} at start", flush=True)
    r = measure(args.jobs, args.finished, args.resync, args.pace_ms, args.kubetune_first)
    print(report(r))
    print(f"load average at end: {', '.join(f'{x:.1f}' for x in os.getloadavg())}")
    return r


if __name__ == "__main__":
    main()
