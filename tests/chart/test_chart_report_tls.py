"""The chart's TLS for the report endpoint (values reportTLS): which Secret the operator serves
from, that its certificate names the URL trainer pods use, that a Helm-generated one survives
`helm upgrade`, and that plain HTTP is an explicit, visible choice."""
from __future__ import annotations

import asyncio
import base64
import http.server
import json
import shutil
import ssl
import threading
import types
import urllib.parse

import jsonschema
import pytest
import yaml
from chartkit import CHART, container_env, find, the
from test_chart import _custom_resource_schemas

MOUNT = "/etc/kubetune/report-tls"


def operator_pod(objs):
    return the(objs, "Deployment")["spec"]["template"]["spec"]


def report_host(objs):
    return urllib.parse.urlsplit(container_env(the(objs, "Deployment"))["KUBETUNE_REPORT_URL"]).hostname


@pytest.mark.parametrize("name,secret_of", [
    ("default", lambda objs: the(objs, "Secret")["metadata"]["name"]),
    ("report-tls-cert-manager", lambda objs: next(c for c in find(objs, "Certificate") if not c["spec"].get("isCA"))["spec"]["secretName"]),
    ("report-tls-cluster-issuer", lambda objs: the(objs, "Certificate")["spec"]["secretName"]),
    ("report-tls-secret", lambda objs: "corp-report-tls"),
])
def test_the_operator_serves_tls_from_the_secret_of_its_source(rendered, name, secret_of):
    objs = rendered[name]
    pod = operator_pod(objs)
    (volume,) = [v for v in pod["volumes"] if v["name"] == "report-tls"]
    assert volume["secret"]["secretName"] == secret_of(objs)
    assert {i["key"] for i in volume["secret"]["items"]} == {"tls.crt", "tls.key", "ca.crt"}
    (mount,) = [m for m in pod["containers"][0]["volumeMounts"] if m["name"] == "report-tls"]
    assert mount == {"name": "report-tls", "mountPath": MOUNT, "readOnly": True}
    env = container_env(the(objs, "Deployment"))
    assert env["KUBETUNE_REPORT_URL"].startswith("https://") and "KUBETUNE_REPORT_INSECURE_HTTP" not in env
    assert (env["KUBETUNE_REPORT_TLS_CERT"], env["KUBETUNE_REPORT_TLS_KEY"], env["KUBETUNE_REPORT_CA"]) == \
        (f"{MOUNT}/tls.crt", f"{MOUNT}/tls.key", f"{MOUNT}/ca.crt")
    # Whatever issues it, the serving certificate is for the host trainer pods connect to.
    for cert in [c for c in find(objs, "Certificate") if not c["spec"].get("isCA")]:
        assert report_host(objs) in cert["spec"]["dnsNames"]


def test_cert_manager_without_an_issuer_bootstraps_its_own_ca(rendered):
    objs = rendered["report-tls-cert-manager"]
    issuers = {i["metadata"]["name"]: i["spec"] for i in find(objs, "Issuer")}
    certs = {c["metadata"]["name"]: c["spec"] for c in find(objs, "Certificate")}
    (root,) = [n for n, c in certs.items() if c.get("isCA")]
    (serving,) = [c for c in certs.values() if not c.get("isCA")]
    assert issuers[certs[root]["issuerRef"]["name"]] == {"selfSigned": {}}
    assert issuers[serving["issuerRef"]["name"]] == {"ca": {"secretName": certs[root]["secretName"]}}
    assert serving["privateKey"]["rotationPolicy"] == "Always" and "server auth" in serving["usages"]
    with_issuer = rendered["report-tls-cluster-issuer"]
    assert not find(with_issuer, "Issuer")
    assert the(with_issuer, "Certificate")["spec"]["issuerRef"] == {"name": "platform-ca", "kind": "ClusterIssuer", "group": "cert-manager.io"}
    # The hand-written cert-manager schema is not a rubber stamp.
    schema = _custom_resource_schemas()[("cert-manager.io/v1", "Certificate")]
    broken = json.loads(json.dumps(the(with_issuer, "Certificate")))
    broken["spec"]["issuerRef"]["kind"] = "Issuers"
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.Draft4Validator(schema).validate(broken)


def test_plain_http_is_an_explicit_choice_the_operator_accepts_and_warns_about(rendered):
    from kubetune_operator.settings import OperatorSettings

    objs = rendered["report-insecure-http"]
    env = container_env(the(objs, "Deployment"))
    assert env["KUBETUNE_REPORT_URL"].startswith("http://") and env["KUBETUNE_REPORT_INSECURE_HTTP"] == "true"
    assert not {"KUBETUNE_REPORT_TLS_CERT", "KUBETUNE_REPORT_TLS_KEY", "KUBETUNE_REPORT_CA"} & set(env)
    assert not find(objs, "Secret") and not find(objs, "Certificate")
    assert not [v for v in operator_pod(objs)["volumes"] if v["name"] == "report-tls"]
    settings = OperatorSettings.from_env(env)
    assert settings.reports_progress and settings.report_insecure_http and not settings.report_serves_tls
    # Without the opt-out the same URL is refused: the chart cannot produce plain HTTP by accident.
    with pytest.raises(ValueError, match="KUBETUNE_REPORT_INSECURE_HTTP=true"):
        OperatorSettings.from_env({k: v for k, v in env.items() if k != "KUBETUNE_REPORT_INSECURE_HTTP"})
    # No status reporter: no certificate either.
    assert not find(rendered["no-status-reporter"], "Secret")


@pytest.mark.parametrize("values,message", [
    ({"reportTLS": {"source": "secret"}}, "reportTLS.secretName is empty"),
    ({"reportTLS": {"secretName": "x"}}, "only used with reportTLS.source=secret"),
    ({"reportTLS": {"source": "vault"}}, "at '/reportTLS/source'"),
    ({"reportTLS": {"source": "cert-manager", "certManager": {"issuerRef": {"kind": "ClusterIssuer"}}}}, "issuerRef has a kind or group but no name"),
    ({"reportTLS": {"certManager": {"duration": "90 days"}}}, "at '/reportTLS/certManager/duration'"),
])
def test_bad_tls_values_are_rejected_with_a_clear_message(helm, values, message):
    out = helm.run("template", "kt", str(CHART), values=values)
    assert out.returncode != 0, f"accepted bad values {values}"
    assert message in out.stderr, out.stderr


def test_the_generated_certificate_is_what_trainer_pods_verify_the_report_url_with(rendered, tmp_path):
    """The chart's Secret served by the operator's report server; a client that trusts only the CA
    the operator puts in each job's ConfigMap connects to the URL's host name, as a trainer pod does."""
    from kubetune_operator import builders
    from kubetune_operator.report_server import ReportServer
    from kubetune_operator.settings import OperatorSettings
    from support.cluster import free_port
    from support.manifests import job_manifest

    objs = rendered["default"]
    secret = the(objs, "Secret")
    assert secret["type"] == "kubernetes.io/tls"
    for key, value in secret["data"].items():
        (tmp_path / key).write_bytes(base64.b64decode(value))
    env = container_env(the(objs, "Deployment"))
    settings = OperatorSettings.from_env({k: v.replace(MOUNT, str(tmp_path)) for k, v in env.items()})
    assert settings.report_serves_tls
    job = job_manifest("j", "ml")
    job["metadata"]["uid"] = "u"
    ca = builders.build_config_map(job, settings)["data"][builders.REPORT_CA_KEY]
    assert ca == (tmp_path / "ca.crt").read_text() and "PRIVATE KEY" not in ca
    host = report_host(objs)
    server = ReportServer(types.SimpleNamespace(settings=settings))

    async def connect(server_hostname: str) -> bool:
        client = ssl.create_default_context(cadata=ca)
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", server.port, ssl=client, server_hostname=server_hostname)
        except ssl.SSLCertVerificationError:
            return False
        writer.close()
        return True

    async def scenario():
        await server.start(free_port(), host="127.0.0.1")
        try:
            assert await connect(host)  # <svc>.<ns>.svc, as in KUBETUNE_REPORT_URL
            assert await connect(f"{host}.cluster.local")
            assert not await connect("kubetune-report.elsewhere.svc")
        finally:
            await server.stop()

    asyncio.run(scenario())


class _ApiServer:
    """Just enough of an API server for `helm template --dry-run=server` of the report-tls template:
    discovery of Secrets, and GET of the Secrets it holds (what Helm's `lookup` asks)."""

    def __init__(self):
        self.secrets: dict[tuple[str, str], dict] = {}
        api = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                parts = self.path.split("?")[0].strip("/").split("/")
                status, body = 200, None
                if parts == ["version"]:
                    body = {"major": "1", "minor": "33", "gitVersion": "v1.33.0"}
                elif parts == ["api"]:
                    body = {"kind": "APIVersions", "versions": ["v1"]}
                elif parts == ["api", "v1"]:
                    body = {"kind": "APIResourceList", "groupVersion": "v1", "resources": [
                        {"name": "secrets", "singularName": "secret", "namespaced": True, "kind": "Secret", "verbs": ["get", "list"]}]}
                elif parts == ["apis"]:
                    body = {"kind": "APIGroupList", "apiVersion": "v1", "groups": []}
                elif len(parts) == 6 and parts[:3] == ["api", "v1", "namespaces"] and parts[4] == "secrets":
                    body = api.secrets.get((parts[3], parts[5]))
                elif len(parts) == 5 and parts[4] == "secrets":
                    body = {"kind": "SecretList", "apiVersion": "v1", "metadata": {}, "items": []}
                if body is None:
                    status, body = 404, {"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "NotFound", "code": 404}
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def install(self, obj: dict, release: str) -> None:
        """Store ``obj`` as `helm install` leaves it (Helm's ownership annotations)."""
        obj = json.loads(json.dumps(obj))
        obj["metadata"].setdefault("annotations", {}).update(
            {"meta.helm.sh/release-name": release, "meta.helm.sh/release-namespace": obj["metadata"]["namespace"]})
        self.secrets[(obj["metadata"]["namespace"], obj["metadata"]["name"])] = obj

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_helm_upgrade_keeps_the_generated_ca_and_certificate(helm, tmp_path):
    """`helm upgrade` renders with a cluster to ask: the chart finds its Secret (lookup) and keeps it,
    so running jobs, whose ConfigMaps hold the CA, keep trusting the operator."""
    chart = tmp_path / "chart"
    shutil.copytree(CHART, chart)
    # Only the report-tls template (and the helpers): the stand-in API server maps only Secrets.
    shutil.rmtree(chart / "crds")
    for template in (chart / "templates").iterdir():
        if not (template.name.startswith("_") or template.name == "report-tls.yaml"):
            template.unlink()
    api = _ApiServer()
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "test",
        "clusters": [{"name": "test", "cluster": {"server": api.url}}],
        "users": [{"name": "test", "user": {"token": "t"}}],
        "contexts": [{"name": "test", "context": {"cluster": "test", "user": "test"}}],
    }))

    def render() -> dict:
        out = helm.run("template", "kt", str(chart), "--namespace", "ks", "--dry-run=server", "--disable-openapi-validation",
                       "--kubeconfig", str(kubeconfig), values={})
        assert out.returncode == 0, out.stderr
        (secret,) = [d for d in yaml.safe_load_all(out.stdout) if d and d["kind"] == "Secret"]
        return secret

    try:
        first = render()
        assert first["data"] != render()["data"]  # nothing installed yet: a new CA each time
        api.install(first, "kt")
        upgraded = render()
        assert upgraded["data"] == first["data"]
        # A Secret of the same name issued for other names is not reused.
        stale = json.loads(json.dumps(first))
        stale["metadata"]["annotations"]["kubetune.io/report-tls-names"] = "kt-kubetune-report.old.svc"
        api.install(stale, "kt")
        assert render()["data"]["ca.crt"] != first["data"]["ca.crt"]
    finally:
        api.close()
