"""RBAC: the chart grants every API call the operator makes, and nothing that is
not on the reviewed list below.

The calls are not guessed: the `lifecycles` fixture runs the real operator,
configured by the chart's env and restricted by the chart's (Cluster)Roles,
through a job's whole life (create, run, gang restart, operator restart,
adoption of existing objects, suspend, resume, success, TTL deletion, user
deletion) against an API emulator that records every request and answers 403
to what the chart does not grant (see chart_scenario.py).

A new API call in the operator fails `test_every_call_is_reviewed` until a
person adds it to REVIEWED (with the reason) and to the chart's rules.
"""
from __future__ import annotations

import pytest
from chart_scenario import Grant, allows
from chartkit import VALUE_SETS, the

from support.emulator import ApiCall

# (API group, resource[/subresource], verb) -> why the operator needs it.
REVIEWED: dict[tuple[str, str, str], str] = {
    ("kubetune.io", "finetunejobs", "list"): "the FineTuneJob watch lists them first (Kopf's watch stream)",
    ("kubetune.io", "finetunejobs", "watch"): "the FineTuneJob watch (Reconciler.watch_ftjs)",
    ("kubetune.io", "finetunejobs", "patch"): "removes the finalizer kubetune.io/finalizer that operators before issue 11 added",
    ("kubetune.io", "finetunejobs", "delete"): "runPolicy.ttlSecondsAfterFinished deletes a finished job",
    ("kubetune.io", "finetunejobs/status", "patch"): "phase, conditions, restarts, and rank 0's checked progress reports",
    ("kubetune.io", "finetunejobs/finalizers", "update"):
        "no API call: the OwnerReferencesPermissionEnforcement admission plugin (OpenShift) requires it to set "
        "blockOwnerDeletion owner references to a FineTuneJob on the objects the operator creates",
    ("batch", "jobs", "list"): "Kopf lists the operator's batch Jobs (label kubetune.io/job)",
    ("batch", "jobs", "watch"): "Kopf watches them",
    ("batch", "jobs", "create"): "one Indexed Job per attempt",
    ("batch", "jobs", "get"): "a create that meets an existing Job adopts it (operator restart)",
    ("batch", "jobs", "patch"): "spec.suspend for suspend/resume",
    ("batch", "jobs", "delete"): "a failed attempt is deleted before the gang restarts",
    ("", "pods", "list"): "Kopf lists the trainer pods (label kubetune.io/job) to read why they fail",
    ("", "pods", "watch"): "Kopf watches them",
    ("", "configmaps", "create"): "the resolved training config",
    ("", "configmaps", "get"): "restarts read the config the job started with; adoption after a restart",
    ("", "services", "create"): "the headless rendezvous Service",
    ("", "services", "get"): "adoption after an operator restart",
    ("", "events", "create"): "Kubernetes Events for phase transitions (Kopf posts them)",
    ("networking.k8s.io", "networkpolicies", "create"): "per job: only the job's own pods reach its pods (networkPolicy.enabled)",
    ("networking.k8s.io", "networkpolicies", "get"): "adoption after an operator restart",
    ("authentication.k8s.io", "tokenreviews", "create"):
        "the report endpoint verifies rank 0's projected token (audience kubetune.io/report) and the pod it is bound to; "
        "cluster-scoped, reads no object (statusReporter)",
    ("kubetune.io", "finetunejobs", "create"): "a FineTuneSweep's trials are FineTuneJobs it owns",
    ("kubetune.io", "finetunesweeps", "list"): "Kopf lists FineTuneSweeps before it watches them",
    ("kubetune.io", "finetunesweeps", "watch"): "Kopf watches FineTuneSweeps",
    ("kubetune.io", "finetunesweeps", "patch"): "Kopf adds and removes the finalizer kubetune.io/finalizer (sweep daemon)",
    ("kubetune.io", "finetunesweeps/status", "patch"): "the study: trials, bestTrial, phase",
    ("kubetune.io", "finetunesweeps/finalizers", "update"):
        "no API call: OwnerReferencesPermissionEnforcement (OpenShift) requires it for the blockOwnerDeletion "
        "owner reference of each trial FineTuneJob on its sweep",
}
# Cluster-wide mode only: Kopf notices when CRDs appear, change or go.
CLUSTER_SCOPED: dict[tuple[str, str, str], str] = {
    ("apiextensions.k8s.io", "customresourcedefinitions", "list"): "Kopf's resource scanning (cluster-wide mode)",
    ("apiextensions.k8s.io", "customresourcedefinitions", "watch"): "Kopf's resource scanning (cluster-wide mode)",
}
# replicaCount > 1 only: Kopf peering.
PEERING = {
    "cluster": {("kopf.dev", "clusterkopfpeerings", v): "Kopf peering keep-alives (cluster-wide mode)" for v in ("list", "watch", "patch")},
    "namespaced": {("kopf.dev", "kopfpeerings", v): "Kopf peering keep-alives (namespaced mode)" for v in ("list", "watch", "patch")},
}
STATUS_REPORTER_ONLY = {("authentication.k8s.io", "tokenreviews", "create")}
NETWORK_POLICY_ONLY = {(g, r, v) for (g, r, v) in REVIEWED if r == "networkpolicies"}
# Granted, but the lifecycle cannot record them; each with the reason.
NOT_EXERCISED = {
    ("kubetune.io", "finetunejobs/finalizers", "update"): "checked by admission, never an API call of its own",
    ("kubetune.io", "finetunesweeps/finalizers", "update"): "checked by admission, never an API call of its own",
    ("batch", "jobs", "get"): "only when a create races a Job the watch has not delivered yet (409 -> GET); "
                              "adds no privilege beyond list/watch, which expose every Job anyway",
    ("kubetune.io", "finetunejobs", "patch"): "only on upgrade: the operator removes the finalizer kubetune.io/finalizer that "
                                              "operators before issue 11 added (the operator adds none); the lifecycle "
                                              "starts with jobs that never had it",
}


def reviewed_for(values: dict) -> set[tuple[str, str, str]]:
    """What the chart must grant for these values: the reviewed list, by mode."""
    scope = (values.get("watch") or {}).get("scope", "cluster")
    expected = set(REVIEWED)
    if (values.get("jobDefaults") or {}).get("statusReporter") is False:
        expected -= STATUS_REPORTER_ONLY
    if not (values.get("networkPolicy") or {}).get("enabled"):
        expected -= NETWORK_POLICY_ONLY
    if scope == "cluster":
        expected |= set(CLUSTER_SCOPED)
    if values.get("replicaCount", 1) > 1:
        expected |= set(PEERING[scope])
    return expected


def _status_reporter(name: str) -> bool:
    return (VALUE_SETS[name].get("jobDefaults") or {}).get("statusReporter", True)


def triples(grants) -> set[tuple[str, str, str]]:
    return {(g.group, g.resource, g.verb) for g in grants}


def call_triple(c: ApiCall) -> tuple[str, str, str]:
    return (c.group, f"{c.resource}/{c.subresource}" if c.subresource else c.resource, c.verb)


@pytest.mark.parametrize("name", list(VALUE_SETS))
def test_chart_grants_exactly_the_reviewed_list(rendered, name):
    from chart_scenario import grants_of

    objs = rendered[name]
    sa = the(objs, "ServiceAccount")["metadata"]
    grants = grants_of(objs, (sa["namespace"], sa["name"]))
    values = VALUE_SETS[name]
    expected = reviewed_for(values)
    got = triples(grants)
    assert got - expected == set(), f"the chart grants unreviewed permissions: {sorted(got - expected)}"
    assert expected - got == set(), f"the chart lacks reviewed permissions: {sorted(expected - got)}"
    assert not any(g.resource_names for g in grants)
    if (values.get("watch") or {}).get("scope") == "namespaced":
        namespaces = values["watch"]["namespaces"]
        # The one cluster-scoped grant: TokenReview (reads no object), for rank 0's progress reports.
        cluster_scoped = triples(g for g in grants if g.namespace is None)
        assert cluster_scoped == (STATUS_REPORTER_ONLY if _status_reporter(name) else set())
        assert {g.namespace for g in grants} - {None} == set(namespaces), "namespaced mode must grant only in the watched namespaces"
        for ns in namespaces:
            assert triples(g for g in grants if g.namespace == ns) == expected - cluster_scoped
    else:
        assert {g.namespace for g in grants} == {None}


def test_grant_checker_is_strict():
    """The authorizer behind these tests refuses what Kubernetes RBAC refuses."""
    grants = {Grant("ml-a", "kubetune.io", "finetunejobs/status", "patch"),
              Grant("ml-a", "", "pods", "list"),
              Grant(None, "batch", "jobs", "watch"),
              Grant("ml-a", "kubetune.io", "finetunejobs", "get", ("job-1",))}
    ok = [ApiCall("patch", "kubetune.io", "finetunejobs", "status", "ml-a", "x"),
          ApiCall("list", "", "pods", None, "ml-a", None),
          ApiCall("watch", "batch", "jobs", None, None, None),
          ApiCall("watch", "batch", "jobs", None, "ml-b", None),
          ApiCall("get", "kubetune.io", "finetunejobs", None, "ml-a", "job-1")]
    refused = [ApiCall("patch", "kubetune.io", "finetunejobs", None, "ml-a", "x"),  # main resource != status
               ApiCall("patch", "kubetune.io", "finetunejobs", "status", "ml-b", "x"),  # other namespace
               ApiCall("list", "", "pods", None, None, None),  # cluster-wide list from a Role
               ApiCall("watch", "", "pods", None, "ml-a", None),  # other verb
               ApiCall("list", "batch", "jobs", None, None, None),
               ApiCall("get", "kubetune.io", "finetunejobs", None, "ml-a", "job-2")]  # resourceNames
    assert all(allows(grants, c) for c in ok)
    assert not any(allows(grants, c) for c in refused)


@pytest.fixture(params=["default", "ha", "ha-namespaced", "no-status-reporter"])
def lifecycle(request, lifecycles):
    cluster, outcome, grants = lifecycles[request.param]
    return request.param, cluster, outcome, grants


def test_operator_works_with_only_the_chart_permissions(lifecycle):
    name, cluster, _, _ = lifecycle
    denied = sorted({call_triple(c) + (c.namespace,) for c in cluster.denied})
    assert denied == [], f"{name}: the API server would refuse these operator calls: {denied}"


def test_every_call_is_reviewed(lifecycle):
    name, cluster, _, _ = lifecycle
    made = {call_triple(c) for c in cluster.operator_calls()}
    unreviewed = made - reviewed_for(VALUE_SETS[name])
    assert not unreviewed, (
        f"{name}: the operator makes API calls nobody reviewed: {sorted(unreviewed)}. Add each to REVIEWED "
        f"in tests/chart/test_rbac.py with the reason, and to the rules in charts/kubetune/templates/_helpers.tpl")


def test_every_grant_is_used(lifecycle):
    """Least privilege: a permission the operator never uses is not granted
    (except NOT_EXERCISED, each with its reason)."""
    name, cluster, _, grants = lifecycle
    made = {call_triple(c) for c in cluster.operator_calls()}
    unused = triples(grants) - made
    assert unused <= set(NOT_EXERCISED), f"{name}: granted but never used in the lifecycle: {sorted(unused - set(NOT_EXERCISED))}"


def test_the_lifecycle_exercised_every_path(lifecycle):
    """Guard against a vacuous recording: the scenario really did these things."""
    name, cluster, outcome, _ = lifecycle
    calls = cluster.operator_calls()

    def count(verb, resource, sub=None):
        return sum(1 for c in calls if c.verb == verb and c.resource == resource and c.subresource == sub)

    assert count("create", "jobs") >= 2 and count("delete", "jobs") >= 1, "gang restart"
    assert count("patch", "jobs") >= 2, "suspend and resume"
    assert count("get", "configmaps") >= 2 and count("get", "services") >= 1, "adoption of existing objects"
    assert count("delete", "finetunejobs") >= 1, "TTL deletion"
    assert count("patch", "finetunejobs", "status") >= 8
    assert count("create", "finetunejobs") == 1 and count("patch", "finetunesweeps", "status") >= 2, "a sweep's trial"
    if _status_reporter(name):
        # Rank 0's report went through the endpoint: its token was reviewed once, then cached.
        assert count("create", "tokenreviews") >= 1 and outcome.reports_accepted >= 1, "a progress report"
    else:
        assert count("create", "tokenreviews") == 0 and outcome.reports_accepted == 0
    # No per-job identity in either mode: trainer pods get no API permission.
    assert count("create", "serviceaccounts") == count("create", "roles") == count("create", "rolebindings") == 0
    if (VALUE_SETS[name].get("networkPolicy") or {}).get("enabled"):
        # Jobs A and B and the sweep's trial each get one; B's existed already (adopted with a get).
        created = {(c.namespace, c.name) for c in calls if c.verb == "create" and c.resource == "networkpolicies"}
        assert len(created) == 3 and count("get", "networkpolicies") >= 1, "per-job NetworkPolicies"
    else:
        assert count("create", "networkpolicies") == 0


def test_the_operator_creates_no_rbac_objects_and_holds_no_escalation(lifecycle):
    """Trainer pods get no Role: the operator creates no RBAC objects, so it needs neither
    RBAC write access nor `escalate`/`bind` (the chart grants none of them)."""
    name, _, outcome, grants = lifecycle
    assert outcome.roles_created == []
    assert not any(g.group == "rbac.authorization.k8s.io" for g in grants)
    assert not any(g.verb in ("escalate", "bind", "impersonate", "*") for g in grants)


def test_namespaced_mode_stays_in_its_namespaces(lifecycles):
    cluster, _, _ = lifecycles["ha-namespaced"]
    watched = set(VALUE_SETS["ha-namespaced"]["watch"]["namespaces"])
    # TokenReview is cluster-scoped but reads nothing: the one call without a namespace.
    outside = {(c.verb, c.resource, c.namespace) for c in cluster.operator_calls()
               if c.namespace not in watched and (c.verb, c.resource) != ("create", "tokenreviews")}
    assert not outside, f"namespaced mode made calls outside its namespaces: {sorted(outside)}"
