"""The Helm chart: lints, renders valid Kubernetes objects for every supported
installation, rejects bad values with actionable messages, and hands the
operator settings it really reads."""
from __future__ import annotations

import functools
import json
import tomllib
from pathlib import Path

import jsonschema
import kubernetes_validate
import pytest
import yaml
from chartkit import CHART, ROOT, VALUE_SETS, container_env, find, the

# The chart's kubeVersion floor and the newest schema kubernetes-validate has.
KUBE_VERSIONS = ["1.29.0", kubernetes_validate.utils.latest_version()]
HERE = Path(__file__).parent


def test_chart_version_follows_the_project_version():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    assert chart["version"] == project, "Chart.yaml version must equal pyproject.toml's project.version"
    assert chart["appVersion"] == project, "Chart.yaml appVersion must equal pyproject.toml's project.version"


@pytest.mark.parametrize("name", ["finetunejob", "finetunesweep"])
def test_chart_crd_is_the_generated_crd(name):
    generated = ROOT / "crds" / f"{name}.yaml"
    shipped = CHART / "files" / "crds" / f"{name}.yaml"
    assert generated.exists(), f"crds/{name}.yaml is missing (run `python -m kubetune_api.crd --write`)"
    assert shipped.read_bytes() == generated.read_bytes(), (
        f"charts/kubetune/files/crds/{name}.yaml differs from crds/{name}.yaml: regenerate both with the CRD generator")
    # Helm would install a CRD in crds/ itself, once, and then clash
    # with the template that upgrades it.
    assert not (CHART / "crds" / f"{name}.yaml").exists()


@pytest.mark.parametrize("name", list(VALUE_SETS))
def test_helm_lint_strict(helm, name):
    out = helm.run("lint", "--strict", str(CHART), values=VALUE_SETS[name])
    assert out.returncode == 0, out.stdout + out.stderr
    assert "0 chart(s) failed" in out.stdout


@pytest.fixture(scope="module", autouse=True)
def _read_each_kubernetes_schema_once():
    """kubernetes-validate re-reads its (large) schema files on every call;
    memoise the reads for this module. Validation itself is unchanged."""
    utils = kubernetes_validate.utils
    original = utils.schema_contents
    utils.schema_contents = functools.lru_cache(maxsize=None)(original)
    yield
    utils.schema_contents = original


def _custom_resource_schemas() -> dict[tuple[str, str], dict]:
    """Schemas for the non-built-in kinds the chart renders."""
    schemas = {("monitoring.coreos.com/v1", "ServiceMonitor"): yaml.safe_load((HERE / "servicemonitor-schema.yaml").read_text())}
    for crd in yaml.safe_load_all((CHART / "crds" / "kopf-peering.yaml").read_text()):
        (version,) = crd["spec"]["versions"]
        schema = dict(version["schema"]["openAPIV3Schema"])
        # The API server accepts apiVersion/kind/metadata on every object and
        # prunes unknown fields; be stricter and reject them.
        schema["properties"] = {
            **schema["properties"],
            "apiVersion": {"enum": [f"{crd['spec']['group']}/{version['name']}"]},
            "kind": {"enum": [crd["spec"]["names"]["kind"]]},
            "metadata": {"type": "object"},
        }
        schema["additionalProperties"] = False
        schema["required"] = ["apiVersion", "kind", "metadata"]
        schemas[(f"{crd['spec']['group']}/{version['name']}", crd["spec"]["names"]["kind"])] = schema
    cert_manager = yaml.safe_load((HERE / "certmanager-schema.yaml").read_text())
    for kind in ("Certificate", "Issuer"):
        schemas[("cert-manager.io/v1", kind)] = {"$schema": cert_manager["$schema"], "definitions": cert_manager["definitions"],
                                                 **cert_manager[kind]}
    return schemas


@pytest.mark.parametrize("name", list(VALUE_SETS))
def test_every_rendered_object_is_valid(rendered, name):
    custom = _custom_resource_schemas()
    objs = rendered[name]
    assert objs, "nothing rendered"
    for obj in objs:
        key = (obj["apiVersion"], obj["kind"])
        where = f"{name}: {obj['kind']}/{obj['metadata']['name']}"
        if key in custom:
            # Not a built-in kind: kubernetes-validate has no schema for it.
            jsonschema.Draft4Validator(custom[key]).validate(obj)
            continue
        for version in KUBE_VERSIONS:
            try:
                kubernetes_validate.validate(obj, version, strict=True)
            except kubernetes_validate.ValidationError as e:
                pytest.fail(f"{where} is invalid for Kubernetes {version}: {e.message} at {list(e.path)}")


def test_custom_kind_schemas_reject_mistakes(rendered):
    """The hand-written ServiceMonitor schema is not a rubber stamp."""
    schemas = _custom_resource_schemas()
    monitor = the(rendered["servicemonitor"], "ServiceMonitor")
    validator = jsonschema.Draft4Validator(schemas[("monitoring.coreos.com/v1", "ServiceMonitor")])
    assert not list(validator.iter_errors(monitor))
    bad_interval = json.loads(json.dumps(monitor))
    bad_interval["spec"]["endpoints"][0]["interval"] = "30 seconds"
    typo = json.loads(json.dumps(monitor))
    typo["spec"]["endpoint"] = typo["spec"].pop("endpoints")
    for bad in (bad_interval, typo):
        assert list(validator.iter_errors(bad))


def test_servicemonitor_scrapes_the_metrics_service(rendered):
    objs = rendered["servicemonitor"]
    monitor = the(objs, "ServiceMonitor")
    assert monitor["metadata"]["labels"]["release"] == "prometheus"
    (service,) = [s for s in find(objs, "Service") if s["metadata"]["name"].endswith("-metrics")]
    labels = service["metadata"]["labels"]
    assert monitor["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert monitor["spec"]["namespaceSelector"]["matchNames"] == [service["metadata"]["namespace"]]
    port_names = {p["name"] for p in service["spec"]["ports"]}
    assert {e["port"] for e in monitor["spec"]["endpoints"]} <= port_names
    # ...and the Service reaches the operator's metrics port.
    deployment = the(objs, "Deployment")
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    (sp,) = service["spec"]["ports"]
    assert ports[sp["targetPort"]] == int(container_env(deployment)["KUBETUNE_METRICS_PORT"])
    assert service["spec"]["selector"].items() <= deployment["spec"]["template"]["metadata"]["labels"].items()
    assert not find(rendered["default"], "ServiceMonitor")


@pytest.mark.parametrize("name", list(VALUE_SETS))
def test_operator_pod_is_locked_down(rendered, name):
    deployment = the(rendered[name], "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"].get("runAsUser", 1) != 0
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    sc = container["securityContext"]
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"] == {"drop": ["ALL"]}
    assert sc["seccompProfile"] == {"type": "RuntimeDefault"}
    assert container["resources"]["requests"]["cpu"] and container["resources"]["requests"]["memory"]
    assert container["resources"]["limits"]["memory"]
    # Probes hit the operator's health endpoint on the port it listens on.
    env = container_env(deployment)
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    for probe in ("livenessProbe", "readinessProbe"):
        get = container[probe]["httpGet"]
        assert get["path"] == "/healthz"
        assert ports[get["port"]] == int(env["KUBETUNE_HEALTH_PORT"])
    # Writable /tmp under the read-only root.
    assert {"name": "tmp", "mountPath": "/tmp"} in container["volumeMounts"]


def test_single_replica_is_standalone_and_never_overlaps(rendered):
    objs = rendered["default"]
    deployment = the(objs, "Deployment")
    assert deployment["spec"]["replicas"] == 1
    assert deployment["spec"]["strategy"] == {"type": "Recreate"}
    assert container_env(deployment)["KUBETUNE_STANDALONE"] == "true"
    assert not find(objs, "ClusterKopfPeering") and not find(objs, "PodDisruptionBudget")
    for role in find(objs, "ClusterRole") + find(objs, "Role"):
        assert not any("kopf.dev" in r["apiGroups"] for r in role["rules"]), "peering RBAC without peering"


@pytest.mark.parametrize("name,peering_kind", [("ha", "ClusterKopfPeering"), ("ha-namespaced", "KopfPeering")])
def test_ha_uses_kopf_peering(rendered, name, peering_kind):
    objs = rendered[name]
    deployment = the(objs, "Deployment")
    env = container_env(deployment)
    assert deployment["spec"]["replicas"] == 2
    assert deployment["spec"]["strategy"]["type"] == "RollingUpdate"
    assert env["KUBETUNE_STANDALONE"] == "false"
    # One fixed priority shared by all replicas would make Kopf pause them all:
    # each replica draws its own.
    assert "KUBETUNE_PEERING_PRIORITY" not in env
    peerings = find(objs, peering_kind)
    watched = VALUE_SETS[name].get("watch", {}).get("namespaces") or [None]
    assert sorted(p["metadata"].get("namespace") or "" for p in peerings) == sorted(ns or "" for ns in watched)
    assert {p["metadata"]["name"] for p in peerings} == {env["KUBETUNE_PEERING_NAME"]}
    # Kopf's identity of each replica is its pod name.
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    pod_id = [e for e in container["env"] if e["name"] == "POD_ID"]
    assert pod_id == [{"name": "POD_ID", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}]
    assert the(objs, "PodDisruptionBudget")["spec"]["minAvailable"] == 1
    plural = peering_kind.lower() + "s"
    rules = [r for role in find(objs, "ClusterRole") + find(objs, "Role") for r in role["rules"]]
    assert any(plural in r["resources"] and "patch" in r["verbs"] for r in rules)
    # The peering CRDs ship in crds/ so the peering objects can be installed.
    crd_names = {c["metadata"]["name"] for c in find(objs, "CustomResourceDefinition")}
    assert f"{plural}.kopf.dev" in crd_names


def test_namespaced_mode_has_no_cluster_wide_permissions(rendered):
    objs = rendered["namespaced"]
    # One cluster-scoped grant: TokenReview (reads no object) for rank 0's progress reports.
    (review,) = find(objs, "ClusterRoleBinding")
    assert review["roleRef"]["name"] == "kt-kubetune-token-review"
    rules = next(r for r in find(objs, "ClusterRole") if r["metadata"]["name"] == "kt-kubetune-token-review")["rules"]
    assert rules == [{"apiGroups": ["authentication.k8s.io"], "resources": ["tokenreviews"], "verbs": ["create"]}]
    # The only ClusterRoles are the people's roles, which bind nobody by
    # themselves: they only add FineTuneJob rules to view/edit/admin.
    for role in find(objs, "ClusterRole"):
        if role["metadata"]["name"] == "kt-kubetune-token-review":
            continue
        assert role["metadata"]["name"] in ("kt-kubetune-view", "kt-kubetune-edit"), role["metadata"]["name"]
        assert any(k.startswith("rbac.authorization.k8s.io/aggregate-to-") for k in role["metadata"]["labels"])
    roles = find(objs, "Role")
    bindings = find(objs, "RoleBinding")
    assert sorted(r["metadata"]["namespace"] for r in roles) == ["ml-team-a", "ml-team-b"]
    assert sorted(b["metadata"]["namespace"] for b in bindings) == ["ml-team-a", "ml-team-b"]
    sa = the(objs, "ServiceAccount")
    for b in bindings:
        assert b["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": roles[0]["metadata"]["name"]}
        assert b["subjects"] == [{"kind": "ServiceAccount", "name": sa["metadata"]["name"],
                                  "namespace": sa["metadata"]["namespace"]}]
    env = container_env(the(objs, "Deployment"))
    assert env["KUBETUNE_WATCH_NAMESPACES"] == "ml-team-a,ml-team-b"
    assert "KUBETUNE_WATCH_NAMESPACES" not in container_env(the(rendered["default"], "Deployment"))


def test_status_reporter_off_drops_the_permissions_it_needed(rendered):
    def granted(objs):
        return {(g, res) for role in find(objs, "ClusterRole") for r in role["rules"]
                for g in r["apiGroups"] for res in r["resources"]}
    on, off = granted(rendered["default"]), granted(rendered["no-status-reporter"])
    assert ("authentication.k8s.io", "tokenreviews") in on and ("authentication.k8s.io", "tokenreviews") not in off
    # Neither mode gives trainer pods an identity: the operator never manages ServiceAccounts or RBAC.
    for granted_set in (on, off):
        assert not {("", "serviceaccounts"), ("rbac.authorization.k8s.io", "roles"), ("rbac.authorization.k8s.io", "rolebindings")} & granted_set
    off_env = container_env(the(rendered["no-status-reporter"], "Deployment"))
    assert off_env["KUBETUNE_STATUS_REPORTER"] == "false" and "KUBETUNE_REPORT_URL" not in off_env
    assert not [s for s in find(rendered["no-status-reporter"], "Service") if s["metadata"]["name"].endswith("-report")]


def test_the_report_service_reaches_the_operators_report_port(rendered):
    objs = rendered["default"]
    env = container_env(the(objs, "Deployment"))
    (service,) = [s for s in find(objs, "Service") if s["metadata"]["name"].endswith("-report")]
    name, ns = service["metadata"]["name"], service["metadata"]["namespace"]
    port = service["spec"]["ports"][0]
    assert env["KUBETUNE_REPORT_URL"] == f"https://{name}.{ns}.svc:{port['port']}"
    (container,) = the(objs, "Deployment")["spec"]["template"]["spec"]["containers"]
    report = next(p for p in container["ports"] if p["name"] == port["targetPort"])
    assert str(report["containerPort"]) == env["KUBETUNE_REPORT_PORT"]
    assert service["spec"]["selector"] == the(objs, "Deployment")["spec"]["selector"]["matchLabels"]


@pytest.mark.parametrize("name", list(VALUE_SETS))
def test_operator_reads_every_setting_the_chart_passes(rendered, name):
    """The env the chart renders parses with the operator's own settings code
    into the values the chart was given."""
    from kubetune_operator.settings import OperatorSettings

    settings_source = (ROOT / "operator" / "kubetune_operator" / "settings.py").read_text()
    deployment = the(rendered[name], "Deployment")
    env = container_env(deployment)
    for var in env:
        assert f'"{var}"' in settings_source, f"the chart sets {var}, which operator settings never read"
    settings = OperatorSettings.from_env(env)
    values = VALUE_SETS[name]
    defaults = yaml.safe_load((CHART / "values.yaml").read_text())
    jd = {**defaults["jobDefaults"], **values.get("jobDefaults", {})}
    storage = {**defaults["jobDefaults"]["storage"], **jd.get("storage", {})}
    image = {**defaults["jobDefaults"]["image"], **jd.get("image", {})}
    assert settings.trainer_image == f"{image['repository']}:{image['tag'] or '0.1.0'}"
    assert settings.image_pull_policy == jd["imagePullPolicy"]
    assert list(settings.image_pull_secrets) == [s["name"] for s in jd["imagePullSecrets"]]
    assert settings.default_storage_endpoint == (storage["endpoint"] or None)
    assert settings.default_storage_region == (storage["region"] or None)
    assert settings.default_storage_secret == (storage["secretName"] or None)
    assert settings.status_reporter == jd["statusReporter"]
    watch = {**defaults["watch"], **values.get("watch", {})}
    assert list(settings.watch_namespaces) == (watch["namespaces"] if watch["scope"] == "namespaced" else [])
    assert settings.standalone == (values.get("replicaCount", 1) == 1)
    assert settings.run_as_user == jd["podSecurityContext"]["runAsUser"] != 0


def test_image_digest_wins_over_tag(helm, rendered):
    objs = helm.template({"jobDefaults": {"image": {"repository": "r.example/t", "tag": "x", "digest": "sha256:" + "0" * 64}}})
    assert container_env(the(objs, "Deployment"))["KUBETUNE_TRAINER_IMAGE"] == "r.example/t@sha256:" + "0" * 64
    operator = the(rendered["custom-images"], "Deployment")
    (container,) = operator["spec"]["template"]["spec"]["containers"]
    assert container["image"] == "registry.example.com:5000/platform/kubetune-operator@sha256:" + "ab" * 32
    assert container["imagePullPolicy"] == "Always"
    assert operator["spec"]["template"]["spec"]["imagePullSecrets"] == [{"name": "regcred"}]

# (values, text the error must contain). Each is a mistake a person makes.
BAD_VALUES = [
    ({"replicaCount": 0}, "at '/replicaCount': minimum: got 0, want 1"),
    ({"replicaCount": "2"}, "at '/replicaCount': got string, want integer"),
    ({"replicas": 2}, "additional properties 'replicas' not allowed"),
    ({"watch": {"scope": "everywhere"}}, "at '/watch/scope': value must be one of 'cluster', 'namespaced'"),
    ({"watch": {"scope": "namespaced"}}, "watch.namespaces is empty: list the namespaces"),
    ({"watch": {"scope": "namespaced", "namespaces": ["Team_A"]}}, "at '/watch/namespaces/0': 'Team_A' does not match pattern"),
    ({"watch": {"scope": "namespaced", "namespaces": ["a", "a"]}}, "at '/watch/namespaces': items at 0 and 1 are equal"),
    ({"watch": {"namespaces": ["ml"]}}, "is only used with watch.scope=namespaced"),
    ({"image": {"repository": "ghcr.io/x/op:1.0"}}, "at '/image/repository'"),
    ({"image": {"digest": "sha256:abc"}}, "at '/image/digest': 'sha256:abc' does not match pattern"),
    ({"operator": {"healthPort": 80}}, "at '/operator/healthPort': minimum: got 80, want 1,024"),
    ({"operator": {"logFormat": "text"}}, "at '/operator/logFormat': value must be one of 'json', 'plain'"),
    ({"jobDefaults": {"podSecurityContext": {"runAsUser": 0}}}, "at '/jobDefaults/podSecurityContext/runAsUser': minimum: got 0, want 1"),
    ({"jobDefaults": {"storage": {"endpoint": "minio:9000"}}}, "at '/jobDefaults/storage/endpoint': 'minio:9000' does not match pattern"),
    ({"jobDefaults": {"imagePullSecrets": ["regcred"]}}, "at '/jobDefaults/imagePullSecrets/0': got string, want object"),
    ({"metrics": {"serviceMonitor": {"enabled": True, "interval": "30 seconds"}}}, "at '/metrics/serviceMonitor/interval'"),
    ({"metrics": {"service": {"enabled": False}, "serviceMonitor": {"enabled": True}}},
     "metrics.serviceMonitor.enabled needs metrics.service.enabled=true"),
    ({"podSecurityContext": {"runAsUser": 0}}, "at '/podSecurityContext/runAsUser': minimum: got 0, want 1"),
]


@pytest.mark.parametrize("values,message", BAD_VALUES, ids=[m[:40] for _, m in BAD_VALUES])
def test_bad_values_are_rejected_with_a_clear_message(helm, values, message):
    out = helm.run("template", "kt", str(CHART), values=values)
    assert out.returncode != 0, f"accepted bad values {values}"
    assert message in out.stderr, out.stderr


def test_notes_tell_the_user_what_to_do_next(helm):
    out = helm.run("install", "kt", str(CHART), "--dry-run=client", "--namespace", "kubetune-system",
                   values=VALUE_SETS["namespaced"])
    assert out.returncode == 0, out.stderr
    notes = out.stdout.split("NOTES:", 1)[1]
    assert "only in: ml-team-a, ml-team-b" in notes
    assert "kubectl -n kubetune-system rollout status deployment/kt-kubetune" in notes
    assert "kubectl -n ml-team-a create secret generic" in notes
    assert "get ftj -w" in notes
    assert "`helm upgrade` upgrades it" in notes and "not --reuse-values" in notes


def test_chart_refuses_clusters_older_than_its_floor(helm):
    """The CRD's CEL rules need Kubernetes 1.29; older clusters are refused up front."""
    too_old = helm.run("template", "kt", str(CHART), "--kube-version", "1.28.9")
    assert too_old.returncode != 0 and "requires kubeVersion: >=1.29.0-0 which is incompatible with Kubernetes v1.28.9" in too_old.stderr
    assert helm.run("template", "kt", str(CHART), "--kube-version", "1.29.0").returncode == 0


def test_tools_are_the_pinned_helm_4_and_fetching_is_idempotent(tools):
    import subprocess

    version = subprocess.run([str(tools / "helm"), "version", "--short"], capture_output=True, text=True, check=True)
    assert version.stdout.startswith("v4."), version.stdout
    before = {name: (tools / name).stat().st_mtime_ns for name in ("helm", "kubectl")}
    again = subprocess.run(["bash", str(ROOT / "scripts" / "get-tools.sh")], capture_output=True, text=True, timeout=120)
    assert again.returncode == 0 and again.stdout.strip() == str(tools)
    assert {name: (tools / name).stat().st_mtime_ns for name in ("helm", "kubectl")} == before, "a second run re-fetched"
