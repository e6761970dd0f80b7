"""The real operator, with exactly the permissions the Helm chart grants, driven
through a job's whole life against the recording API emulator.

`AuthorizingCluster` is the operator engineer's emulated cluster with one
addition: an authorizer built from the rendered chart's (Cluster)Roles. Every
request the operator makes is recorded (verb, group, resource, subresource,
namespace, name) and answered 403 Forbidden, as a real API server would, when
no rule grants it. The test client (User-Agent `kubetune-tests`) plays the
user, the Job controller and the kubelet and is never restricted.

The scenario (`run_lifecycle`): job A is created, its pods start (Running), a
pod fails (gang restart: attempt 2), the operator is restarted, A is
suspended and resumed, its Job completes (Succeeded) and
ttlSecondsAfterFinished deletes it. Job B is created while the operator is
down, with its per-job objects already present (as if an earlier operator
died right after creating them), so the operator adopts them; then the user
deletes B while it runs.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable
from typing import Any

import attrs
from kmock._internal import enums

from support import kubelet
from support.cluster import TEST_AGENT, EmulatedCluster, wait_for
from support.emulator import ApiCall, KubeEmulator, Semantics, _error
from support.manifests import job_manifest

_ACTION_VERBS = {
    enums.action.LIST: "list", enums.action.WATCH: "watch", enums.action.FETCH: "get",
    enums.action.CREATE: "create", enums.action.UPDATE: "patch", enums.action.DELETE: "delete",
}
# The FineTuneJob's metadata that GitOps owns (set by the test as Argo CD would).
GITOPS_LABELS = {"app.kubernetes.io/instance": "ml-runs", "team": "nlp"}
GITOPS_ANNOTATIONS = {
    "argocd.argoproj.io/tracking-id": "ml-runs:kubetune.io/FineTuneJob:{ns}/{name}",
    "kubectl.kubernetes.io/last-applied-configuration": '{"spec":{}}',
}
FOREIGN_FINALIZER = "example.com/keep-until-archived"


# ----------------------------------------------------------------- RBAC
@dataclasses.dataclass(frozen=True)
class Grant:
    """One (namespace, group, resource, verb) a rule allows; namespace None: cluster-wide."""

    namespace: str | None
    group: str
    resource: str  # plural or plural/subresource
    verb: str
    resource_names: tuple[str, ...] = ()


def grants_of(objs: Iterable[dict[str, Any]], operator_sa: tuple[str, str]) -> set[Grant]:
    """Everything the chart's RBAC objects grant the operator's ServiceAccount."""
    objs = list(objs)
    roles = {(o["kind"], o["metadata"].get("namespace"), o["metadata"]["name"]): o
             for o in objs if o["kind"] in ("Role", "ClusterRole")}
    out: set[Grant] = set()
    for b in objs:
        if b["kind"] not in ("RoleBinding", "ClusterRoleBinding"):
            continue
        if not any(s["kind"] == "ServiceAccount" and (s["namespace"], s["name"]) == operator_sa for s in b["subjects"]):
            continue
        ns = b["metadata"].get("namespace") if b["kind"] == "RoleBinding" else None
        ref = b["roleRef"]
        role = roles[(ref["kind"], ns if ref["kind"] == "Role" else None, ref["name"])]
        for rule in role["rules"]:
            for g in rule["apiGroups"]:
                for r in rule["resources"]:
                    for v in rule["verbs"]:
                        out.add(Grant(ns, g, r, v, tuple(rule.get("resourceNames") or ())))
    return out


def allows(grants: set[Grant], call: ApiCall) -> bool:
    resource = f"{call.resource}/{call.subresource}" if call.subresource else call.resource
    for g in grants:
        if g.namespace is not None and g.namespace != call.namespace:
            continue  # a RoleBinding grants only in its namespace (and nothing cluster-scoped)
        if g.group not in (call.group, "*") or g.resource not in (resource, "*") or g.verb not in (call.verb, "*"):
            continue
        if g.resource_names and call.name not in g.resource_names:
            continue
        return True
    return False


@attrs.define(kw_only=True)
class AuthorizingEmulator(KubeEmulator):
    """The recording emulator, answering 403 to the operator's unauthorized requests."""

    authorize: Callable[[ApiCall], bool] | None = None
    denied: list[ApiCall] = attrs.field(factory=list, init=False)

    async def _handle(self, request: Any) -> Any:
        res = request.resource
        agent = request.headers.get("User-Agent", "")
        if (self.authorize is not None and not agent.startswith(TEST_AGENT)
                and res is not None and res.plural is not None and request.action in _ACTION_VERBS):
            verb = "update" if request.method == enums.method.PUT and request.name else _ACTION_VERBS[request.action]
            call = ApiCall(verb, res.group or "", res.plural, request.subresource, request.namespace, request.name, agent)
            if not self.authorize(call):
                self.calls.append(call)
                self.denied.append(call)
                where = f' in the namespace "{call.namespace}"' if call.namespace else " at the cluster scope"
                return await self._render_error(_error(
                    403, "Forbidden",
                    f'{res.plural} is forbidden: User "system:serviceaccount:kubetune-system:kt-kubetune" cannot '
                    f'{verb} resource "{res.plural}" in API group "{res.group or ""}"{where}'))
        return await super()._handle(request)


class AuthorizingCluster(EmulatedCluster):
    """EmulatedCluster serving an AuthorizingEmulator."""

    def __init__(self, authorize: Callable[[ApiCall], bool]):
        # RBAC off in the emulator only: its AuthorizingEmulator enforces the value set's own rendered RBAC instead.
        super().__init__(keep_history=True, semantics=Semantics(rbac=False))
        self.authorize = authorize

    def _make_emulator(self) -> AuthorizingEmulator:
        return AuthorizingEmulator(keep_history=True, semantics=self.semantics, authorize=self.authorize)

    @property
    def denied(self) -> list[ApiCall]:
        return list(self.emulator.denied)

    def requests(self) -> list[Any]:
        """Every HTTP request the emulator received (kmock's request log), in order."""
        return list(self.emulator)


# ------------------------------------------------------------- scenario
def _phase(cluster: EmulatedCluster, ns: str, name: str) -> str | None:
    obj = cluster.get("FineTuneJob", ns, name)
    return ((obj or {}).get("status") or {}).get("phase")


def _wait_phase(cluster, ns, name, *phases, timeout=30.0):
    return wait_for(lambda: _phase(cluster, ns, name) in phases, timeout=timeout,
                    message=f"{ns}/{name} phase in {phases} (now {_phase(cluster, ns, name)})")


def _gitops_manifest(name: str, ns: str, **spec) -> dict[str, Any]:
    m = job_manifest(name, ns, **spec)
    m["metadata"]["labels"] = dict(GITOPS_LABELS)
    m["metadata"]["annotations"] = {k: v.replace("{ns}", ns).replace("{name}", name) for k, v in GITOPS_ANNOTATIONS.items()}
    return m


@dataclasses.dataclass
class Outcome:
    namespaces: tuple[str, str]
    job_a: str = "run-a"
    job_b: str = "run-b"
    roles_created: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    reports_accepted: int = 0


def run_sweep(cluster: AuthorizingCluster, ns: str, name: str = "sweep-s") -> None:
    """A FineTuneSweep with one trial, from start to Succeeded, then deleted."""
    template = job_manifest("t", ns, distributed={"nodes": 1, "gpusPerNode": 1})["spec"]
    cluster.create({
        "apiVersion": "kubetune.io/v1alpha1", "kind": "FineTuneSweep", "metadata": {"name": name, "namespace": ns},
        "spec": {"template": template, "algorithm": "grid",
                 "parameters": [{"path": "training.learningRate", "type": "categorical", "values": [1e-4]}]},
    })
    trial = f"{name}-t0"
    from kubetune_operator import builders

    # The trial's own operator side starts it (its batch Job) before the test plays its trainer.
    wait_for(lambda: cluster.get("Job", ns, builders.batch_job_name(trial, 1)), timeout=30, message=f"trial {trial} started")
    # The operator's own write after creating the Job (Initializing) first: the status has no
    # resourceVersion precondition, so a later one would overwrite the test's Succeeded below.
    wait_for(lambda: _phase(cluster, ns, trial) == "Initializing", timeout=30, message=f"trial {trial} Initializing")
    cluster.patch_status("FineTuneJob", ns, trial, {"phase": "Succeeded", "output": {"metrics": {"evalLoss": 1.0}}})
    try:
        wait_for(lambda: ((cluster.get("FineTuneSweep", ns, name) or {}).get("status") or {}).get("phase") == "Succeeded",
                 timeout=30, message=f"sweep {name} Succeeded")
    except AssertionError as e:
        raise AssertionError(f"{e}; sweep status {(cluster.get('FineTuneSweep', ns, name) or {}).get('status')}; "
                             f"denied {cluster.denied}") from None
    cluster.delete("FineTuneSweep", ns, name)
    wait_for(lambda: cluster.get("FineTuneSweep", ns, name) is None, timeout=30, message=f"sweep {name} gone")


def _report_progress(cluster: AuthorizingCluster, settings: Any, ns: str, name: str, rank0: dict[str, Any]) -> int:
    """Rank 0 posts a progress report with its projected token; the operator reviews it and writes status."""
    import requests

    from kubetune_operator import builders

    token = cluster.service_account_token(ns, "default", (builders.REPORT_AUDIENCE,), pod=rank0["metadata"]["name"])
    answer = requests.post(f"{settings.report_url}/v1/namespaces/{ns}/finetunejobs/{name}/report",
                           json={"attempt": 1, "stage": "running", "progress": {"step": 1}},
                           headers={"Authorization": f"Bearer {token}"}, timeout=30, verify=settings.report_ca)
    assert answer.status_code == 204, answer.text
    wait_for(lambda: ((cluster.get("FineTuneJob", ns, name) or {}).get("status") or {}).get("progress"), timeout=30,
             message="the report in status")
    return 1


def run_lifecycle(cluster: AuthorizingCluster, settings: Any, namespaces: tuple[str, str]) -> Outcome:
    """Job A in namespaces[0], job B in namespaces[1]; the operator watches what its settings say."""
    from kubetune_operator import builders

    out = Outcome(namespaces)
    ns_a, ns_b = namespaces
    for ns in {ns_a, ns_b}:
        cluster.ensure_namespace(ns)
    a, b = out.job_a, out.job_b

    def job(ns: str, name: str, attempt: int) -> dict[str, Any]:
        return wait_for(lambda: cluster.get("Job", ns, builders.batch_job_name(name, attempt)), timeout=30,
                        message=f"Job {builders.batch_job_name(name, attempt)}")

    with cluster.operator(settings):
        manifest = _gitops_manifest(a, ns_a, runPolicy={"maxRestarts": 2, "backoffSeconds": 0, "ttlSecondsAfterFinished": 0},
                                    distributed={"nodes": 2, "gpusPerNode": 8})
        manifest["metadata"]["finalizers"] = [FOREIGN_FINALIZER]
        cluster.create(manifest)
        job1 = job(ns_a, a, 1)
        pods = kubelet.create_pods(cluster, job1)
        for p in pods:
            kubelet.run(cluster, p)
        _wait_phase(cluster, ns_a, a, "Running")
        if settings.reports_progress:
            out.reports_accepted += _report_progress(cluster, settings, ns_a, a, pods[0])
        # A pod crashes: the operator ends the attempt and starts attempt 2.
        kubelet.terminate(cluster, pods[1], 1, message="RuntimeError: NCCL error")
        job2 = job(ns_a, a, 2)
        wait_for(lambda: cluster.get("Job", ns_a, builders.batch_job_name(a, 1)) is None, timeout=30, message="attempt 1 deleted")
        pods = kubelet.create_pods(cluster, job2)
        for p in pods:
            kubelet.run(cluster, p)
        _wait_phase(cluster, ns_a, a, "Running")

    # The operator is down (a restart or an upgrade). Meanwhile job B arrives, and
    # its per-job objects exist already, as if a previous operator died right
    # after creating them.
    created_b = cluster.create(_gitops_manifest(b, ns_b, distributed={"nodes": 1, "gpusPerNode": 1}))
    for obj in builders.build_job_independent_objects(created_b, settings):
        obj["metadata"]["namespace"] = ns_b
        cluster.create(obj)

    with cluster.operator(settings):
        # B: the operator adopts the existing objects and starts attempt 1.
        job_b = job(ns_b, b, 1)
        kubelet.run(cluster, kubelet.create_pods(cluster, job_b)[0])
        _wait_phase(cluster, ns_b, b, "Running")

        # A: suspend and resume from git.
        cluster.patch("FineTuneJob", ns_a, a, {"spec": {"suspend": True}})
        wait_for(lambda: (cluster.get("Job", ns_a, job2["metadata"]["name"])["spec"]).get("suspend") is True, timeout=30, message="Job suspended")
        kubelet.suspend_pods(cluster, job2)
        _wait_phase(cluster, ns_a, a, "Suspended")
        cluster.patch("FineTuneJob", ns_a, a, {"spec": {"suspend": False}})
        wait_for(lambda: (cluster.get("Job", ns_a, job2["metadata"]["name"])["spec"]).get("suspend") is False, timeout=30, message="Job resumed")
        _wait_phase(cluster, ns_a, a, "Initializing", "Running")
        pods = kubelet.create_pods(cluster, cluster.get("Job", ns_a, job2["metadata"]["name"]))
        for p in pods:
            kubelet.run(cluster, p)
        _wait_phase(cluster, ns_a, a, "Running")

        # A succeeds; ttlSecondsAfterFinished=0 makes the operator delete it. Our
        # foreign finalizer holds the object until we (its owner) remove it.
        kubelet.complete_job(cluster, cluster.get("Job", ns_a, job2["metadata"]["name"]), pods)
        wait_for(lambda: (cluster.get("FineTuneJob", ns_a, a) or {}).get("metadata", {}).get("deletionTimestamp"),
                 timeout=30, message="the operator deletes A after its TTL")
        wait_for(lambda: cluster.get("FineTuneJob", ns_a, a)["metadata"].get("finalizers") == [FOREIGN_FINALIZER],
                 timeout=30, message="the operator removes only its own finalizer")
        cluster.patch("FineTuneJob", ns_a, a, [{"op": "remove", "path": "/metadata/finalizers"}])
        wait_for(lambda: cluster.get("FineTuneJob", ns_a, a) is None, timeout=30, message="A gone")

        # The user deletes B while it runs.
        cluster.delete("FineTuneJob", ns_b, b)
        wait_for(lambda: cluster.get("FineTuneJob", ns_b, b) is None, timeout=30, message="B gone")

        # A one-trial FineTuneSweep in B's namespace: its trial is created, pruned
        # trials would be suspended (the same patch as suspend above), it finishes.
        run_sweep(cluster, ns_b)

    out.roles_created = [
        r.data for r in cluster.requests()
        if r.method == enums.method.POST and r.resource is not None and r.resource.plural == "roles"
        and not r.headers.get("User-Agent", "").startswith(TEST_AGENT)
    ]
    return out
