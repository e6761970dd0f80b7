"""Operator at scale: create->Job latency, API requests per job, operator memory.

For each N (default 100, 200, 500) on a fresh emulated API server: start the
real operator as its own process (`kubetune operator`, kubeconfig login, as in a
cluster), create N FineTuneJobs as fast as one client can, and wait until every
job has its batch Job and phase Initializing. Reports:

- create->Job latency: from the API server storing the FineTuneJob to it
  storing the job's first batch Job (both timed inside the emulator), p50/p99;
- API requests per job: every request the operator made after it was ready
  (watch streams excluded), divided by N, with the breakdown per verb/resource;
- operator CPU: user+system seconds the operator process spent from the
  burst to the end, per job (less sensitive to a busy machine than latency);
- operator memory: RSS of the operator process, idle before the burst and
  peak during it (sampled every 20 ms), and the peak growth per job.

The emulator and this client run in this process; the operator in another, so
its memory is its own. Both share the machine's cores: the load average is
printed, since latency on a busy 2-core box says more about the box than about
the operator. Ratios against the smallest N show how it scales.

    .venv/bin/python bench/operator_scale.py [--sizes 100,200,500]
"""
from __future__ import annotations

import argparse
import collections
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from support.cluster import EmulatedCluster, wait_for  # noqa: E402
from support.manifests import job_manifest  # noqa: E402

NS = "bench"


def percentile(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, max(0, int(round(q * (len(values) - 1)))))]


class RssSampler(threading.Thread):
    def __init__(self, pid: int):
        super().__init__(daemon=True)
        self.proc = psutil.Process(pid)
        self.peak = 0
        self.stop_flag = threading.Event()

    def current(self) -> int:
        return self.proc.memory_info().rss

    def run(self) -> None:
        while not self.stop_flag.is_set():
            try:
                self.peak = max(self.peak, self.current())
            except psutil.Error:
                return
            time.sleep(0.02)


def run_once(n: int, workdir: str) -> dict:
    with EmulatedCluster(keep_history=False) as cluster:
        cluster.ensure_namespace(NS)
        env = dict(os.environ, KUBECONFIG=cluster.write_kubeconfig(os.path.join(workdir, f"kubeconfig-{n}")),
                   KUBETUNE_LOG_FORMAT="json", OMP_NUM_THREADS="1")
        log = open(os.path.join(workdir, f"operator-{n}.log"), "w")
        proc = subprocess.Popen(
            [sys.executable, "-m", "kubetune_operator.cli", "operator", "--namespace", NS, "--standalone",
             "--metrics-port", "0", "--health-port", "0"],
            env=env, stdout=log, stderr=subprocess.STDOUT,
        )
        try:
            def watching() -> bool:
                resources = {c.resource for c in cluster.operator_calls() if c.verb == "watch"}
                return {"finetunejobs", "jobs", "pods"} <= resources
            wait_for(watching, timeout=60, interval=0.05, message="operator watching")
            time.sleep(0.5)  # let the initial lists settle
            sampler = RssSampler(proc.pid)
            idle_rss = sampler.current()
            cpu0 = sum(sampler.proc.cpu_times()[:2])
            sampler.start()
            baseline_calls = len(cluster.operator_calls())

            t0 = time.monotonic()
            for i in range(n):
                cluster.create(job_manifest(f"job-{i:04d}", NS, distributed={"nodes": 2, "gpusPerNode": 8}))
            created_s = time.monotonic() - t0

            def settled() -> bool:
                have = cluster.emulator.created_at
                if not all(("jobs", NS, f"job-{i:04d}-a1") in have for i in range(n)):
                    return False
                items = cluster.list("FineTuneJob", NS)
                return sum(1 for o in items if (o.get("status") or {}).get("phase") == "Initializing") == n
            wait_for(settled, timeout=900, interval=0.5, message=f"{n} jobs Initializing")
            all_done_s = time.monotonic() - t0
            time.sleep(1.0)  # trailing events (Kopf posts them in the background)
            cpu_s = sum(sampler.proc.cpu_times()[:2]) - cpu0
            sampler.stop_flag.set()
            sampler.join()

            at = cluster.emulator.created_at
            latencies = [at[("jobs", NS, f"job-{i:04d}-a1")] - at[("finetunejobs", NS, f"job-{i:04d}")] for i in range(n)]
            calls = [c for c in cluster.operator_calls()[baseline_calls:] if c.verb != "watch"]
            breakdown = collections.Counter(f"{c.verb} {c.resource}{'/' + c.subresource if c.subresource else ''}" for c in calls)
            return {
                "n": n,
                "create_s": created_s,
                "all_s": all_done_s,
                "p50": percentile(latencies, 0.50),
                "p99": percentile(latencies, 0.99),
                "max": max(latencies),
                "calls_per_job": len(calls) / n,
                "cpu_ms_per_job": cpu_s / n * 1000,
                "breakdown": {k: v / n for k, v in breakdown.most_common()},
                "idle_mib": idle_rss / 2**20,
                "peak_mib": sampler.peak / 2**20,
                "per_job_kib": (sampler.peak - idle_rss) / n / 1024,
            }
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
            log.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="100,200,500")
    args = ap.parse_args()
    sizes = [int(x) for x in args.sizes.split(",")]
    print(f"machine: {os.cpu_count()} cores, load average {', '.join(f'{x:.1f}' for x in os.getloadavg())} at start")
    results = []
    with tempfile.TemporaryDirectory() as workdir:
        for n in sizes:
            r = run_once(n, workdir)
            results.append(r)
            print(f"N={n}: created in {r['create_s']:.1f}s, all Initializing after {r['all_s']:.1f}s; "
                  f"create->Job p50 {r['p50']:.2f}s p99 {r['p99']:.2f}s max {r['max']:.2f}s; "
                  f"{r['calls_per_job']:.1f} API requests/job; operator CPU {r['cpu_ms_per_job']:.0f} ms/job; operator RSS idle {r['idle_mib']:.0f} MiB, "
                  f"peak {r['peak_mib']:.0f} MiB (+{r['per_job_kib']:.0f} KiB/job)", flush=True)
    print(f"\nAPI requests per job (operator, after start-up, watches excluded), N={results[-1]['n']}:")
    for k, v in results[-1]["breakdown"].items():
        print(f"  {v:5.2f}  {k}")
    base = results[0]
    print(f"\n{'N':>5} {'p50 s':>7} {'p99 s':>7} {'req/job':>8} {'peak MiB':>9} {'p99 vs N=' + str(base['n']):>12} {'req/job vs':>11}")
    for r in results:
        print(f"{r['n']:>5} {r['p50']:>7.2f} {r['p99']:>7.2f} {r['calls_per_job']:>8.1f} {r['peak_mib']:>9.0f} "
              f"{r['p99'] / base['p99']:>12.2f} {r['calls_per_job'] / base['calls_per_job']:>11.2f}")
    print(f"load average at end: {', '.join(f'{x:.1f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
