"""The operator as the chart runs it.

HA (replicaCount 2): two real operator replicas, configured by the chart's
env and restricted by its RBAC, share the chart's Kopf peering object; one
works, the other stands by and takes over when the first stops. Probes and
the metrics Service reach the running operator's endpoints."""
from __future__ import annotations

import dataclasses
import logging
import socket

import requests
from chart_scenario import AuthorizingCluster, allows, grants_of
from chartkit import container_env, find, https_post, mount_report_tls, the

from support import kubelet
from support.cluster import wait_for
from support.manifests import job_manifest


def test_two_replicas_one_active_then_failover(rendered, caplog, tmp_path):
    from kubetune_operator import builders
    from kubetune_operator.runner import OperatorThread
    from kubetune_operator.settings import OperatorSettings

    objs = rendered["ha"]
    sa = the(objs, "ServiceAccount")["metadata"]
    grants = grants_of(objs, (sa["namespace"], sa["name"]))
    settings = OperatorSettings.from_env(container_env(the(objs, "Deployment")))
    settings = mount_report_tls(objs, dataclasses.replace(settings, metrics_port=0, health_port=0), tmp_path)
    assert not settings.standalone
    caplog.set_level(logging.INFO, logger="kopf._core.engines.peering")

    with AuthorizingCluster(lambda call: allows(grants, call)) as cluster:
        (peering,) = find(objs, "ClusterKopfPeering")
        cluster.request("POST", "/apis/kopf.dev/v1/clusterkopfpeerings", peering)
        cluster.ensure_namespace("ml")
        # Each replica its own report port: on a cluster they are separate pods.
        replicas = [OperatorThread(dataclasses.replace(settings, report_port=_free_port()), login=cluster.login).start()
                    for _ in range(2)]
        try:
            def peers():
                obj = cluster.request("GET", f"/apis/kopf.dev/v1/clusterkopfpeerings/{peering['metadata']['name']}")
                return obj.get("status") or {}

            wait_for(lambda: len(peers()) == 2, timeout=30, message="both replicas announce themselves")
            priorities = [p["priority"] for p in peers().values()]
            assert len(set(priorities)) == 2, f"replicas share a priority, so Kopf pauses both: {priorities}"

            def active_replicas() -> int:
                # Kopf starts a peering replica paused; it logs each resume and pause.
                last: dict[int, str] = {}
                for r in caplog.records:
                    msg = r.getMessage()
                    if msg.startswith("Resuming operations") or msg.startswith("Pausing"):
                        last[r.thread] = msg
                return sum(1 for msg in last.values() if msg.startswith("Resuming"))

            # Wait until the replicas have settled: one works, the other stands by.
            wait_for(lambda: active_replicas() == 1 and len(peers()) == 2, timeout=30, message="exactly one active replica")

            cluster.create(job_manifest("ha-run", "ml"))
            job1 = wait_for(lambda: cluster.get("Job", "ml", builders.batch_job_name("ha-run", 1)), timeout=30,
                            message="the active replica creates the Job")
            # Both replicas' child watches see the Job (a standby keeps its caches warm); only one runs the job's loop.
            active = [r for r in replicas if (st := r.reconciler.states.get(("ml", "ha-run"))) is not None and st.loop_active]
            assert len(active) == 1, "exactly one replica handles the job"
            (standby,) = [r for r in replicas if r is not active[0]]

            # The active replica goes away (a node drain, a rolling update).
            active[0].stop()
            replicas.remove(active[0])
            pods = kubelet.create_pods(cluster, job1)
            for p in pods:
                kubelet.run(cluster, p)
            wait_for(lambda: (cluster.get("FineTuneJob", "ml", "ha-run").get("status") or {}).get("phase") == "Running",
                     timeout=30, message="the standby takes over and sees the pods running")
            assert ("ml", "ha-run") in standby.reconciler.states
            assert not cluster.denied, f"refused: {cluster.denied}"
        finally:
            for r in replicas:
                r.stop()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_probes_and_metrics_service_reach_the_running_operator(helm, tmp_path):
    """The Deployment's probes and the metrics Service's target port, followed
    to the operator started with the chart's settings, answer."""
    from kubetune_operator.runner import OperatorThread
    from kubetune_operator.settings import OperatorSettings

    objs = helm.template({"operator": {"healthPort": _free_port(), "metricsPort": _free_port(), "reportPort": _free_port()}})
    deployment = the(objs, "Deployment")
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    (service,) = [s for s in find(objs, "Service") if s["metadata"]["name"].endswith("-metrics")]
    settings = mount_report_tls(objs, OperatorSettings.from_env(container_env(deployment)), tmp_path)
    sa = the(objs, "ServiceAccount")["metadata"]
    grants = grants_of(objs, (sa["namespace"], sa["name"]))
    with AuthorizingCluster(lambda call: allows(grants, call)) as cluster:
        with OperatorThread(settings, login=cluster.login):
            def answer_tls(url: str, ca: str):
                try:
                    return https_post(url, ca)
                except ConnectionError:
                    return None

            def answer(url: str):
                try:
                    return requests.get(url, timeout=5)
                except requests.ConnectionError:
                    return None  # not listening yet, as in a pod's first seconds

            for probe in ("livenessProbe", "readinessProbe"):
                get = container[probe]["httpGet"]
                url = f"http://127.0.0.1:{ports[get['port']]}{get['path']}"
                r = wait_for(lambda url=url: answer(url), timeout=15,
                             message=f"{probe} endpoint listening")
                assert r.status_code == 200, f"{probe}: HTTP {r.status_code}"
            r = requests.get(f"http://127.0.0.1:{ports[service['spec']['ports'][0]['targetPort']]}/metrics", timeout=5)
            assert r.status_code == 200 and "kubetune_jobs" in r.text
            # The report Service reaches the report endpoint over TLS that a trainer pod verifies: the CA the
            # operator hands to pods, the Service's host name from KUBETUNE_REPORT_URL (a request without
            # rank 0's token: 401).
            (report,) = [s for s in find(objs, "Service") if s["metadata"]["name"].endswith("-report")]
            port = ports[report["spec"]["ports"][0]["targetPort"]]
            url = f"{settings.report_url.rsplit(':', 1)[0]}:{port}/v1/namespaces/ml/finetunejobs/x/report"
            ca = settings.report_ca_pem()
            code = wait_for(lambda: answer_tls(url, ca), timeout=15, message="report endpoint listening")
            assert code == 401
        assert not cluster.denied
