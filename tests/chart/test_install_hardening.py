"""Install hardening (issue 16): numbers stay integers, names stay within 63
characters, the CRD is upgraded with the chart, the standard values work, bad
combinations are refused, and the people's roles grant what docs/install.md
says, checked against the authorizing API emulator."""
from __future__ import annotations

import re
import subprocess
import sys

import pytest
import requests
import yaml
from chart_scenario import AuthorizingCluster, Grant, allows, grants_of
from chartkit import CHART, ROOT, VALUE_SETS, container_env, find, the

from support.manifests import job_manifest

LONG_RELEASE = "r" * 40 + "-production-1"  # 53 characters: Helm's limit for a release name
assert len(LONG_RELEASE) == 53


# ------------------------------------------------------------- integers
def test_openshift_uids_render_as_integers_and_the_operator_parses_them(helm):
    """OpenShift's uids (1000680000) are what Helm's float handling used to
    print as 1.00068e+09, which the operator refused at start."""
    from kubetune_operator.settings import OperatorSettings

    values = VALUE_SETS["openshift-uids"]
    out = helm.run("template", "kt", str(CHART), values=values)
    assert out.returncode == 0, out.stderr
    assert "e+0" not in out.stdout, "a number was rendered in exponent notation"
    objs = [d for d in yaml.safe_load_all(out.stdout) if d]
    deployment = the(objs, "Deployment")
    env = container_env(deployment)
    assert env["KUBETUNE_RUN_AS_USER"] == "1000680000"
    settings = OperatorSettings.from_env(env)
    assert (settings.run_as_user, settings.run_as_group, settings.fs_group) == (1000680000,) * 3
    assert settings.max_backoff_seconds == 2000000000 and settings.resync_seconds == 86400
    pod = deployment["spec"]["template"]["spec"]["securityContext"]
    assert (pod["runAsUser"], pod["runAsGroup"], pod["fsGroup"]) == (1000690000,) * 3
    assert all(type(pod[k]) is int for k in ("runAsUser", "runAsGroup", "fsGroup"))
    # The trainer pods the operator builds with these settings carry them too.
    import dataclasses

    from kubetune_operator import builders
    from support.tls import local_pki

    settings = dataclasses.replace(settings, report_ca=str(local_pki().ca))  # the mounted Secret's ca.crt, here
    (job,) = [o for o in builders.build_objects(_owned_job(), settings) if o["kind"] == "Job"]
    pod_sc = job["spec"]["template"]["spec"]["securityContext"]
    assert pod_sc["runAsUser"] == 1000680000 and pod_sc["fsGroup"] == 1000680000


def _owned_job() -> dict:
    m = job_manifest("uid-run", "ml")
    m["metadata"]["uid"] = "0000-uid"
    return m


# ---------------------------------------------------------------- names
def _names_and_labels(objs: list[dict]) -> list[tuple[str, str]]:
    found = []
    for o in objs:
        meta = o["metadata"]
        found.append((f"{o['kind']} name", meta["name"]))
        for k, v in (meta.get("labels") or {}).items():
            found.append((f"{o['kind']}/{meta['name']} label {k}", str(v)))
    return found


@pytest.mark.parametrize("values", [{}, {"replicaCount": 2}, {"nameOverride": "kubetune-operator-for-the-ml-platform"}],
                         ids=["default", "ha", "long-nameOverride"])
def test_a_53_character_release_keeps_every_name_within_63(helm, values):
    objs = helm.template({**values, "metrics": {"serviceMonitor": {"enabled": True}}}, release=LONG_RELEASE)
    too_long = [(what, v) for what, v in _names_and_labels(objs) if len(v) > 63]
    assert not too_long, too_long
    names = [(o["kind"], o["metadata"].get("namespace"), o["metadata"]["name"]) for o in objs]
    assert len(names) == len(set(names)), "two objects got the same name after shortening"
    metrics = [s for s in find(objs, "Service") if s["metadata"]["name"].endswith("-metrics")]
    assert len(metrics) == 1 and len(metrics[0]["metadata"]["name"]) <= 63
    for role in ("view", "edit"):
        assert any(r["metadata"]["name"].endswith(f"-{role}") for r in find(objs, "ClusterRole"))


def test_name_overrides(helm):
    objs = helm.template({"fullnameOverride": "tuner"})
    assert the(objs, "Deployment")["metadata"]["name"] == "tuner"
    assert {s["metadata"]["name"] for s in find(objs, "Service")} == {"tuner-metrics", "tuner-report"}
    assert the(objs, "ServiceAccount")["metadata"]["name"] == "tuner"
    # The trainers reach the report Service by the name the operator was given.
    env = {e["name"]: e.get("value") for e in the(objs, "Deployment")["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["KUBETUNE_REPORT_URL"].startswith("https://tuner-report.")
    objs = helm.template({"nameOverride": "ft"}, release="ml")
    deployment = the(objs, "Deployment")
    assert deployment["metadata"]["name"] == "ml-ft"
    assert deployment["spec"]["selector"]["matchLabels"]["app.kubernetes.io/name"] == "ft"


# ---------------------------------------------------------- CRD upgrades
def _generated_crd(name: str = "finetunejob") -> dict:
    return yaml.safe_load((ROOT / "crds" / f"{name}.yaml").read_text())


def test_crd_is_a_template_so_upgrades_upgrade_it(helm):
    for extra in ((), ("--is-upgrade",)):
        objs = helm.template({}, "kubetune-system", "kt", *extra)
        (crd,) = [c for c in find(objs, "CustomResourceDefinition") if c["metadata"]["name"] == "finetunejobs.kubetune.io"]
        assert crd["spec"] == _generated_crd()["spec"]
        (sweep_crd,) = [c for c in find(objs, "CustomResourceDefinition") if c["metadata"]["name"] == "finetunesweeps.kubetune.io"]
        assert sweep_crd["spec"] == _generated_crd("finetunesweep")["spec"]
        assert sweep_crd["metadata"]["annotations"] == {"helm.sh/resource-policy": "keep"}
        assert crd["metadata"]["annotations"] == {"helm.sh/resource-policy": "keep"}
        assert crd["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "Helm"
    # Without --include-crds too: it is an ordinary template, not a crds/ file.
    out = helm.run("template", "kt", str(CHART))
    assert "name: finetunejobs.kubetune.io" in out.stdout
    objs = helm.template({"crds": {"keep": False}})
    (crd,) = [c for c in find(objs, "CustomResourceDefinition") if c["metadata"]["name"] == "finetunejobs.kubetune.io"]
    assert "annotations" not in crd["metadata"]
    assert not [c for c in find(helm.template({"crds": {"install": False}}), "CustomResourceDefinition")
                if c["metadata"]["name"] == "finetunejobs.kubetune.io"]


def _doc_commands(doc: str, marker: str) -> list[str]:
    """Shell commands from the ```bash blocks of a doc that contain `marker`."""
    text = (ROOT / "docs" / doc).read_text()
    blocks = re.findall(r"```bash\n(.*?)```", text, flags=re.S)
    commands = []
    for block in blocks:
        for cmd in block.replace("\\\n", " ").splitlines():
            if marker in cmd:
                commands.append(cmd.strip())
    return commands


def test_documented_crd_commands_render_the_crd(helm, tools):
    """The commands docs/install.md gives for managing the CRD yourself print
    exactly the generated CRD (the `kubectl apply` half needs a cluster)."""
    (cmd,) = _doc_commands("install.md", "--show-only templates/crds.yaml")
    render, _, apply = cmd.partition("|")
    assert "kubectl apply --server-side" in apply
    argv = render.split()
    assert argv[:2] == ["helm", "template"]
    argv = [str(tools / "helm"), *[str(CHART) if a in ("kubetune/kubetune", "charts/kubetune") else a for a in argv[1:]]]
    out = subprocess.run(argv, capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert out.returncode == 0, out.stderr
    docs = [d for d in yaml.safe_load_all(out.stdout) if d]
    assert [d["metadata"]["name"] for d in docs] == ["finetunejobs.kubetune.io", "finetunesweeps.kubetune.io"]
    assert docs[0]["spec"] == _generated_crd()["spec"]
    assert docs[1]["spec"] == _generated_crd("finetunesweep")["spec"]
    # And no page still tells people to apply a chart folder they do not have,
    # or to upgrade with --reuse-values (it drops every value a new chart adds).
    for page in ("install.md", "gitops.md"):
        text = (ROOT / "docs" / page).read_text()
        assert "-f charts/kubetune/crds/" not in text, page
        assert not _doc_commands(page, "--reuse-values"), page
    (upgrade,) = _doc_commands("install.md", "helm upgrade")
    assert " -f " in upgrade


def test_gitops_guide_covers_crd_upgrades_with_flux_and_argocd():
    text = (ROOT / "docs" / "gitops.md").read_text()
    section = text[text.index("## Installing kubetune itself with GitOps"):]
    for needle in ("crds.install", "helm.sh/resource-policy", "upgrade.crds", "crds: CreateReplace", "ServerSideApply=true",
                   "Delete=false"):
        assert needle in section, needle


# --------------------------------------------------------- standard values
def test_common_labels_reach_every_object(rendered):
    objs = rendered["openshift-uids"]
    for o in objs:
        if o["kind"] == "CustomResourceDefinition" and o["metadata"]["name"].endswith("kopf.dev"):
            continue  # crds/ files: Helm installs them verbatim
        labels = o["metadata"].get("labels") or {}
        assert labels.get("team") == "platform" and labels.get("cost-center") == "ml-1234", o["metadata"]["name"]
    pod_labels = the(objs, "Deployment")["spec"]["template"]["metadata"]["labels"]
    assert pod_labels["team"] == "platform"


def test_topology_spread_and_extra_volumes(rendered):
    deployment = the(rendered["openshift-uids"], "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    (tsc,) = pod["topologySpreadConstraints"]
    assert tsc["topologyKey"] == "topology.kubernetes.io/zone" and tsc["maxSkew"] == 1
    assert tsc["labelSelector"]["matchLabels"] == deployment["spec"]["selector"]["matchLabels"]
    assert {"name": "ca", "configMap": {"name": "corp-ca"}} in pod["volumes"]
    (container,) = pod["containers"]
    assert {"name": "ca", "mountPath": "/etc/ssl/corp", "readOnly": True} in container["volumeMounts"]
    assert {"name": "tmp", "mountPath": "/tmp"} in container["volumeMounts"]


BAD_VALUES = [
    ({"operator": {"healthPort": 9090, "metricsPort": 9090}}, "operator.healthPort and operator.metricsPort are both 9090"),
    ({"metrics": {"service": {"type": "LoadBalancer"}}}, "metrics.service.type=LoadBalancer publishes the operator's metrics outside"),
    ({"metrics": {"service": {"type": "NodePort"}}}, "set metrics.service.exposeOutsideCluster=true"),
    ({"metrics": {"service": {"type": "ExternalName"}}}, "at '/metrics/service/type': value must be one of"),
    ({"commonLabels": {"app.kubernetes.io/name": "x"}}, "commonLabels.app.kubernetes.io/name: the chart sets app.kubernetes.io/*"),
    ({"commonLabels": {"team": 7}}, "at '/commonLabels/team': got number, want string"),
    ({"nameOverride": "Kube_Tune"}, "at '/nameOverride': 'Kube_Tune' does not match pattern"),
    ({"fullnameOverride": "x" * 64}, "at '/fullnameOverride': maxLength"),
    ({"crds": {"instal": True}}, "additional properties 'instal' not allowed"),
    ({"jobDefaults": {"storage": {"endpoint": "https://key:secret@minio:9000"}}}, "at '/jobDefaults/storage/endpoint'"),
    ({"topologySpreadConstraints": [{"maxSkew": 1}]}, "at '/topologySpreadConstraints/0': missing properties"),
    ({"extraVolumeMounts": [{"name": "ca", "mountPath": "etc/ssl"}]}, "at '/extraVolumeMounts/0/mountPath'"),
]


@pytest.mark.parametrize("values,message", BAD_VALUES, ids=[m[:40] for _, m in BAD_VALUES])
def test_unsafe_or_clashing_values_are_refused(helm, values, message):
    out = helm.run("template", "kt", str(CHART), values=values)
    assert out.returncode != 0, f"accepted {values}"
    assert message in out.stderr, out.stderr


# ------------------------------------------------------------ README
def test_chart_readme_is_generated_from_the_schema():
    out = subprocess.run([sys.executable, str(ROOT / "scripts" / "chart_readme.py"), "--check"],
                         capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr
    readme = (CHART / "README.md").read_text()
    # Every value the schema knows appears in the table, with its default.
    for needle in ("`jobDefaults.podSecurityContext.runAsUser`", "`crds.keep`", "`rbac.userRoles`", "`commonLabels`",
                   "| `replicaCount` | integer | `1` |"):
        assert needle in readme, needle


# ------------------------------------------------------ people's roles
BUILTIN_AGGREGATION = {"view": "rbac.authorization.k8s.io/aggregate-to-view",
                       "edit": "rbac.authorization.k8s.io/aggregate-to-edit",
                       "admin": "rbac.authorization.k8s.io/aggregate-to-admin"}


def aggregate(objs: list[dict]) -> list[dict]:
    """The built-in view/edit/admin ClusterRoles as the cluster-role aggregation
    controller fills them: the union of the rules of every ClusterRole that
    carries the aggregation label (Kubernetes' own system:aggregate-to-* roles
    left out: they add nothing for kubetune.io)."""
    out = []
    for name, label in BUILTIN_AGGREGATION.items():
        rules = [r for o in find(objs, "ClusterRole") if (o["metadata"].get("labels") or {}).get(label) == "true"
                 for r in o["rules"]]
        out.append({"kind": "ClusterRole", "metadata": {"name": name}, "rules": rules})
    return out


def documented_user_roles() -> dict[str, set[tuple[str, str]]]:
    """docs/install.md's table of the people's roles: {role: {(resource, verb)}}."""
    text = (ROOT / "docs" / "install.md").read_text()
    section = text[text.index("### Roles for people"):]
    section = section[:section.index("\n#", 1)]
    out: dict[str, set[tuple[str, str]]] = {}
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) < 4 or not cells[0].startswith("`"):
            continue
        role = cells[0].strip("`")
        resources = re.findall(r"`([\w/]+)`", cells[1])
        verbs = [v.strip() for v in cells[2].split(",")]
        out.setdefault(role, set()).update((r, v) for r in resources for v in verbs)
    return out


def test_user_roles_grant_exactly_what_the_docs_say(helm):
    objs = helm.template({}, release="kubetune")
    documented = documented_user_roles()
    rendered = {}
    for o in find(objs, "ClusterRole"):
        if o["metadata"]["name"] in ("kubetune-view", "kubetune-edit"):
            rendered[o["metadata"]["name"]] = {(r, v) for rule in o["rules"] for r in rule["resources"] for v in rule["verbs"]}
            assert all(rule["apiGroups"] == ["kubetune.io"] for rule in o["rules"])
    assert set(rendered) == {"kubetune-view", "kubetune-edit"}
    assert {k: v for k, v in documented.items() if k in rendered} == rendered
    # What each built-in role ends up with, also as documented.
    for builtin in aggregate(objs):
        got = {(r, v) for rule in builtin["rules"] for r in rule["resources"] for v in rule["verbs"]}
        assert got == documented[builtin["metadata"]["name"]], builtin["metadata"]["name"]


@pytest.fixture(scope="module")
def people_cluster(helm):
    """The authorizing emulator with the chart's roles aggregated into the
    built-in ones and bound as a platform would: alice may edit in ml, bob may
    view in ml, carol is admin of ml."""
    objs = helm.template({}, release="kubetune")
    builtin = aggregate(objs)
    bindings = [
        {"kind": "RoleBinding", "metadata": {"name": f"{who}-{role}", "namespace": "ml"},
         "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": role},
         "subjects": [{"kind": "ServiceAccount", "namespace": "users", "name": who}]}
        for who, role in (("alice", "edit"), ("bob", "view"), ("carol", "admin"))
    ]
    grants = {who: grants_of(builtin + bindings, ("users", who)) for who in ("alice", "bob", "carol")}

    def authorize(call):
        return call.user_agent in grants and allows(grants[call.user_agent], call)

    cluster = AuthorizingCluster(authorize).start()
    try:
        for ns in ("ml", "other"):
            cluster.ensure_namespace(ns)
        cluster.create(job_manifest("seed", "ml"))
        cluster.create(job_manifest("seed", "other"))
        yield cluster, grants
    finally:
        cluster.stop()


def _as(cluster, who: str, method: str, path: str, body=None, content_type: str | None = None) -> int:
    headers = {"User-Agent": who}
    if content_type:
        headers["Content-Type"] = content_type
    r = requests.request(method, cluster.url + path, json=body, headers=headers, timeout=30)
    return r.status_code


def test_aggregated_roles_against_the_authorizing_cluster(people_cluster):
    cluster, grants = people_cluster
    jobs = "/apis/kubetune.io/v1alpha1/namespaces/{ns}/finetunejobs"
    merge = "application/merge-patch+json"

    def can(who, method, ns, name=None, sub=None, body=None, content_type=None):
        path = jobs.format(ns=ns) + (f"/{name}" if name else "") + (f"/{sub}" if sub else "")
        code = _as(cluster, who, method, path, body, content_type)
        assert code != 404, f"{who} {method} {path}: 404 (the test is broken, not the role)"
        return code < 400

    for who in ("alice", "carol"):
        assert can(who, "POST", "ml", body=job_manifest(f"by-{who}", "ml"))
        assert can(who, "GET", "ml", f"by-{who}")
        assert can(who, "GET", "ml")
        assert can(who, "PATCH", "ml", f"by-{who}", body={"spec": {"suspend": True}}, content_type=merge)
        assert not can(who, "PATCH", "ml", f"by-{who}", "status", {"status": {"phase": "Succeeded"}}, merge), \
            "people must not write status: it is the operator's"
        assert can(who, "DELETE", "ml", f"by-{who}")
        # Bindings are per namespace: nothing in `other`.
        assert not can(who, "GET", "other", "seed")
        assert not can(who, "POST", "other", body=job_manifest(f"by-{who}", "other"))
    assert can("bob", "GET", "ml", "seed") and can("bob", "GET", "ml")
    assert not can("bob", "POST", "ml", body=job_manifest("by-bob", "ml"))
    assert not can("bob", "PATCH", "ml", "seed", body={"spec": {"suspend": True}}, content_type=merge)
    assert not can("bob", "DELETE", "ml", "seed")
    assert not can("nobody", "GET", "ml", "seed")
    # The refusals above were the authorizer's (403), not another error.
    assert {c.user_agent for c in cluster.denied} >= {"alice", "bob", "carol", "nobody"}
    # FineTuneSweeps, through the same API server.
    sweeps = "/apis/kubetune.io/v1alpha1/namespaces/{ns}/finetunesweeps"

    def sweep(name: str, ns: str = "ml") -> dict:
        template = job_manifest("t", ns)["spec"]
        return {"apiVersion": "kubetune.io/v1alpha1", "kind": "FineTuneSweep", "metadata": {"name": name, "namespace": ns},
                "spec": {"template": template, "algorithm": "grid",
                         "parameters": [{"path": "training.learningRate", "type": "categorical", "values": [1e-4]}]}}

    def can_sweep(who, method, ns, name=None, sub=None, body=None, content_type=None):
        path = sweeps.format(ns=ns) + (f"/{name}" if name else "") + (f"/{sub}" if sub else "")
        code = _as(cluster, who, method, path, body, content_type)
        assert code != 404, f"{who} {method} {path}: 404 (the test is broken, not the role)"
        return code < 400

    assert can_sweep("alice", "POST", "ml", body=sweep("s"))
    assert can_sweep("alice", "GET", "ml", "s") and can_sweep("alice", "GET", "ml")
    assert can_sweep("alice", "PATCH", "ml", "s", body={"spec": {"parallelism": 2}}, content_type=merge)
    assert not can_sweep("alice", "PATCH", "ml", "s", "status", {"status": {"phase": "Succeeded"}}, merge)
    assert can_sweep("bob", "GET", "ml", "s") and can_sweep("bob", "GET", "ml")
    assert not can_sweep("bob", "POST", "ml", body=sweep("by-bob"))
    assert not can_sweep("bob", "PATCH", "ml", "s", body={"spec": {"parallelism": 1}}, content_type=merge)
    assert not can_sweep("bob", "DELETE", "ml", "s")
    assert not can_sweep("alice", "POST", "other", body=sweep("s", "other"))
    assert can_sweep("carol", "DELETE", "ml", "s")
    assert not can_sweep("nobody", "GET", "ml")
    # Watches too: what `kubectl get -w` needs (view includes watch).
    assert _as(cluster, "bob", "GET", sweeps.format(ns="ml") + "?watch=true&timeoutSeconds=1") < 400
    assert _as(cluster, "nobody", "GET", jobs.format(ns="ml") + "?watch=true&timeoutSeconds=1") == 403
    assert Grant("ml", "kubetune.io", "finetunejobs/status", "patch") not in grants["carol"]


def test_documented_admission_policy_refuses_foreign_images_and_service_accounts():
    """The ValidatingAdmissionPolicy in docs/install.md, its CEL expressions
    evaluated (cel-python) on jobs it must allow and refuse."""
    import celpy

    text = (ROOT / "docs" / "install.md").read_text()
    blocks = [list(yaml.safe_load_all(b)) for b in re.findall(r"```yaml\n(.*?)```", text, flags=re.S)]
    (policy,) = [d for docs in blocks for d in docs if isinstance(d, dict) and d.get("kind") == "ValidatingAdmissionPolicy"]
    (binding,) = [d for docs in blocks for d in docs if isinstance(d, dict) and d.get("kind") == "ValidatingAdmissionPolicyBinding"]
    assert binding["spec"]["policyName"] == policy["metadata"]["name"]
    (rule,) = policy["spec"]["matchConstraints"]["resourceRules"]
    assert rule["apiGroups"] == ["kubetune.io"] and rule["resources"] == ["finetunejobs"]
    env = celpy.Environment()
    programs = [env.program(env.compile(v["expression"])) for v in policy["spec"]["validations"]]

    def admitted(**spec) -> bool:
        job = job_manifest("j", "ml", **spec)
        return all(bool(p.evaluate({"object": celpy.json_to_cel(job)})) for p in programs)

    assert admitted()
    assert admitted(image="registry.example.com/ml/kubetune-trainer:0.1.0")
    assert admitted(serviceAccountName="s3-reader")
    assert not admitted(image="docker.io/evil/miner:latest")
    assert not admitted(image="registry.example.com/other/x:1")
    assert not admitted(serviceAccountName="default")
    assert not admitted(serviceAccountName="ci-deployer", image="registry.example.com/ml/t:1")


def test_network_policy_option_turns_on_the_operators_per_job_policies(rendered, helm):
    """networkPolicy.enabled reaches the operator (which creates one NetworkPolicy per job,
    tests/operator/test_real_cluster.py) with the permissions it needs in every watched
    namespace; the chart itself renders no NetworkPolicy (a per-namespace one would let
    every trainer pod of the namespace reach every other and widen the per-job ones)."""
    from kubetune_operator.settings import OperatorSettings

    def operator_view(objs):
        settings = OperatorSettings.from_env(container_env(the(objs, "Deployment")))
        sa = the(objs, "ServiceAccount")["metadata"]
        grants = {(g.namespace, g.group, g.resource, g.verb) for g in grants_of(objs, (sa["namespace"], sa["name"]))
                  if g.resource == "networkpolicies"}
        return settings.network_policy, grants

    for name in ("default", "ha", "openshift-like"):
        assert operator_view(rendered[name]) == (False, set()), name
    assert operator_view(rendered["openshift-uids"]) == (
        True, {(None, "networking.k8s.io", "networkpolicies", v) for v in ("get", "create")})
    assert operator_view(rendered["ha-namespaced"]) == (
        True, {(ns, "networking.k8s.io", "networkpolicies", v) for ns in ("ml-team-a", "ml-team-b") for v in ("get", "create")})
    for name, objs in rendered.items():
        assert not find(objs, "NetworkPolicy"), name
    # The per-namespace option of the first version is gone, with a message naming it.
    out = helm.run("template", "kt", str(CHART), values={"networkPolicy": {"enabled": True, "namespaces": ["ml"]}})
    assert out.returncode != 0 and "networkPolicy" in out.stderr and "namespaces" in out.stderr
