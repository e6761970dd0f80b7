"""The report channel over TLS: the token and reports are encrypted, and go only to the operator.

The operator serves HTTPS with the certificate it is given; trainer pods verify it against
the CA that the operator puts into each job's ConfigMap (no Secret reaches a pod). A server
whose certificate does not chain to that CA (a spoofed endpoint) never sees the token, and
plain HTTP needs an explicit opt-out on both sides.
"""
import asyncio
import http.server
import json
import logging
import ssl
import threading
import types

import pytest
import requests

from kubetune_operator import builders
from kubetune_operator.report_server import ReportServer
from kubetune_operator.settings import OperatorSettings
from kubetune_trainer import k8s_status, progress
from support import kubelet
from support.cluster import EmulatedCluster, free_port, reporting_settings, wait_for
from support.manifests import job_manifest
from support.tls import local_pki, make_pki

NS = "tls"
OUT = "s3://kubetune-test/tls"


@pytest.fixture(scope="module")
def cluster():
    with EmulatedCluster() as c:
        c.ensure_namespace(NS)
        yield c


@pytest.fixture(scope="module")
def operator(cluster):
    settings = reporting_settings()
    assert settings.report_url.startswith("https://")
    with cluster.operator(settings, namespaces=(NS,)):
        yield settings


def status(cluster, name):
    return (cluster.get("FineTuneJob", NS, name) or {}).get("status") or {}


def running_job(cluster, name):
    """A job whose attempt 1 runs: -> (its Job, its rank-0 pod)."""
    cluster.create(job_manifest(name, NS, output={"uri": f"{OUT}/{name}"}))
    job = wait_for(lambda: cluster.get("Job", NS, builders.batch_job_name(name, 1)), message="Job")
    pods = [kubelet.run(cluster, p) for p in kubelet.create_pods(cluster, job)]
    wait_for(lambda: status(cluster, name).get("phase") == "Running", message="Running")
    return job, pods[0]


def pod_env(cluster, job, rank0, tmp_path):
    """Rank 0's reporter environment as the kubelet would give it: the template's env, the ConfigMap
    volume's files and the projected token, each at a local path."""
    container = job["spec"]["template"]["spec"]["containers"][0]
    env = {e["name"]: e["value"] for e in container["env"] if "value" in e}
    env["KUBETUNE_JOB_NAMESPACE"] = NS
    config = cluster.get("ConfigMap", NS, builders.config_map_name(job["metadata"]["labels"][builders.LABEL_JOB]))
    for key, text in config["data"].items():
        (tmp_path / key).write_text(text)
    (tmp_path / "token").write_text(cluster.service_account_token(NS, "default", (builders.REPORT_AUDIENCE,),
                                                                  pod=rank0["metadata"]["name"]))
    env["KUBETUNE_REPORT_TOKEN"] = str(tmp_path / "token")
    assert env["KUBETUNE_REPORT_CA"] == f"{builders.CONFIG_DIR}/{builders.REPORT_CA_KEY}"
    env["KUBETUNE_REPORT_CA"] = str(tmp_path / builders.REPORT_CA_KEY)
    env["KUBETUNE_STATUS_INTERVAL"] = "0"
    return env


class Spoof:
    """An HTTPS (or HTTP) endpoint that records every request it gets: where a stolen token would land."""

    def __init__(self, pki=None):
        self.requests: list[dict] = []
        spoof = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                spoof.requests.append({"authorization": self.headers.get("Authorization"), "body": body})
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = http.server.HTTPServer(("127.0.0.1", 0), Handler)
        scheme = "http"
        if pki is not None:
            context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            context.load_cert_chain(str(pki.cert), str(pki.key))
            self.server.socket = context.wrap_socket(self.server.socket, server_side=True)
            scheme = "https"
        self.url = f"{scheme}://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()


def test_the_pod_verifies_the_operator_with_the_ca_from_its_configmap_and_reports_over_tls(cluster, operator, tmp_path):
    job, rank0 = running_job(cluster, "roundtrip")
    config = cluster.get("ConfigMap", NS, builders.config_map_name("roundtrip"))
    assert config["data"][builders.REPORT_CA_KEY] == local_pki().ca.read_text()  # the CA, never a key
    assert "PRIVATE KEY" not in json.dumps(config["data"])
    env = pod_env(cluster, job, rank0, tmp_path)
    assert env["KUBETUNE_REPORT_URL"].startswith("https://") and "KUBETUNE_REPORT_INSECURE_HTTP" not in env
    r = k8s_status.reporter_from_env(env)
    r.event({"event": "phase", "phase": "Running"})
    r.progress({"step": 4, "totalSteps": 40, "loss": 1.5})
    r.close()
    assert r.sent >= 1
    wait_for(lambda: status(cluster, "roundtrip").get("progress", {}).get("step") == 4, message="the report in status")


def test_the_endpoint_does_not_speak_plain_http(cluster, operator, tmp_path):
    plain = operator.report_url.replace("https://", "http://") + f"/v1/namespaces/{NS}/finetunejobs/roundtrip/report"
    with pytest.raises(requests.exceptions.ConnectionError):
        requests.post(plain, json={"progress": {"step": 1}}, headers={"Authorization": "Bearer t"}, timeout=5)
    # And it serves only the certificate of the CA the pods trust.
    other = make_pki(tmp_path)
    with pytest.raises(requests.exceptions.SSLError):
        requests.post(operator.report_url + "/x", timeout=5, verify=str(other.ca))


@pytest.mark.parametrize("spoof_hosts,trust", [
    (("127.0.0.1", "localhost"), "another-ca"),  # a valid name, signed by a CA the pod does not trust
    (("kubetune-report.kubetune.svc",), "its-ca"),  # the trusted CA, but not for the URL's host
], ids=["other-ca", "wrong-name"])
def test_the_trainer_sends_no_token_to_a_server_it_cannot_verify(tmp_path, spoof_hosts, trust, caplog):
    spoof_pki = make_pki(tmp_path / "spoof", hosts=spoof_hosts)
    trusted_ca = spoof_pki.ca if trust == "its-ca" else make_pki(tmp_path / "trusted").ca
    (tmp_path / "token").write_text("the-pods-report-token")
    with Spoof(spoof_pki) as spoof, caplog.at_level(logging.WARNING, logger="kubetune.k8s_status"):
        r = k8s_status.KubernetesStatusReporter(spoof.url, NS, "victim", token_file=str(tmp_path / "token"),
                                                ca_file=str(trusted_ca), min_interval=0.0, timeout=2.0)
        r.event({"event": "phase", "phase": "Running"})
        wait_for(lambda: "CERTIFICATE_VERIFY_FAILED" in caplog.text, message="a certificate verification failure in the log")
        r.close(timeout=1.0)
    assert r.sent == 0 and spoof.requests == []


def test_plain_http_needs_the_explicit_opt_out_and_says_so(tmp_path, caplog):
    (tmp_path / "token").write_text("the-pods-report-token")
    with Spoof() as spoof:
        base = {"KUBETUNE_JOB_NAME": "j", "KUBETUNE_JOB_NAMESPACE": NS, "KUBETUNE_REPORT_URL": spoof.url,
                "KUBETUNE_REPORT_TOKEN": str(tmp_path / "token"), "KUBETUNE_STATUS_INTERVAL": "0"}
        with pytest.raises(ValueError, match="KUBETUNE_REPORT_INSECURE_HTTP=true"):
            k8s_status.reporter_from_env(base)
        # The trainer goes on training with progress in its logs only.
        with caplog.at_level(logging.WARNING):
            reporters = progress.reporters_from_env(0, {**base, "KUBETUNE_REPORTER": "kubernetes"})
        assert not [x for x in reporters.reporters if isinstance(x, k8s_status.KubernetesStatusReporter)]
        assert "plain HTTP" in caplog.text
        # An https URL without the CA is refused too (no fallback to the system trust store).
        with pytest.raises(ValueError, match="KUBETUNE_REPORT_CA is unset"):
            k8s_status.reporter_from_env({**base, "KUBETUNE_REPORT_URL": "https://127.0.0.1:1"})
        assert spoof.requests == []
        # Opted out: it sends, and warns.
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="kubetune.k8s_status"):
            r = k8s_status.reporter_from_env({**base, "KUBETUNE_REPORT_INSECURE_HTTP": "true"})
        assert "over plain HTTP" in caplog.text
        r.progress({"step": 1})
        r.close()
        assert r.sent == 1 and spoof.requests[0]["authorization"] == "Bearer the-pods-report-token"


def test_operator_settings_refuse_a_channel_that_would_expose_the_token():
    pki = local_pki()
    tls = {"KUBETUNE_REPORT_URL": "https://kubetune-report.kubetune.svc:8443", "KUBETUNE_REPORT_TLS_CERT": str(pki.cert),
           "KUBETUNE_REPORT_TLS_KEY": str(pki.key), "KUBETUNE_REPORT_CA": str(pki.ca)}
    s = OperatorSettings.from_env(tls)
    assert s.report_serves_tls and s.report_ca_pem() == pki.ca.read_text()
    for env, needle in [
        ({"KUBETUNE_REPORT_URL": "http://kubetune-report.kubetune.svc:8443"}, "KUBETUNE_REPORT_INSECURE_HTTP=true"),
        ({**tls, "KUBETUNE_REPORT_CA": ""}, "needs KUBETUNE_REPORT_CA"),
        ({**tls, "KUBETUNE_REPORT_TLS_KEY": ""}, "go together"),
        ({k: v for k, v in tls.items() if "TLS" not in k}, "no certificate to serve"),
        ({**tls, "KUBETUNE_REPORT_URL": "http://kubetune-report.kubetune.svc:8443", "KUBETUNE_REPORT_INSECURE_HTTP": "true"},
         "use an https:// URL"),
    ]:
        with pytest.raises(ValueError, match=needle):
            OperatorSettings.from_env(env)
    insecure = OperatorSettings.from_env({"KUBETUNE_REPORT_URL": "http://r:8443", "KUBETUNE_REPORT_INSECURE_HTTP": "true"})
    assert insecure.reports_progress and not insecure.report_serves_tls
    # Pods are told to use plain HTTP only then; otherwise they get the CA's path.
    job = job_manifest("p", "ml")
    job["metadata"]["uid"] = "u"
    env = {e["name"]: e.get("value") for e in builders.build_batch_job(job, insecure, 1)["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["KUBETUNE_REPORT_INSECURE_HTTP"] == "true" and "KUBETUNE_REPORT_CA" not in env
    assert builders.REPORT_CA_KEY not in builders.build_config_map(job, insecure)["data"]
    env = {e["name"]: e.get("value") for e in builders.build_batch_job(job, s, 1)["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["KUBETUNE_REPORT_CA"] == "/etc/kubetune/report-ca.crt" and "KUBETUNE_REPORT_INSECURE_HTTP" not in env
    with pytest.raises(ValueError, match="holds no PEM certificate"):
        OperatorSettings(report_url="https://r:1", report_port=0, report_ca=str(pki.key)).report_ca_pem()


def test_kubetune_operator_refuses_plain_http_without_the_opt_out(monkeypatch):
    from kubetune_operator import runner

    monkeypatch.setenv("KUBETUNE_REPORT_URL", "http://kubetune-report.kubetune.svc:8443")
    monkeypatch.delenv("KUBETUNE_REPORT_INSECURE_HTTP", raising=False)
    with pytest.raises(SystemExit, match="kubetune operator: KUBETUNE_REPORT_URL=.* is plain HTTP"):
        runner.main(types.SimpleNamespace())


def test_a_renewed_certificate_is_served_without_a_restart(tmp_path):
    pki = make_pki(tmp_path / "tls")
    settings = OperatorSettings(report_url="https://127.0.0.1:1", report_tls_cert=str(pki.cert), report_tls_key=str(pki.key),
                                report_ca=str(pki.ca))
    server = ReportServer(types.SimpleNamespace(settings=settings))  # only the TLS part is used here

    async def handshake(ca) -> bool:
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", server.port, ssl=ssl.create_default_context(cafile=str(ca)))
        except ssl.SSLError:
            return False
        writer.close()
        return True

    async def scenario():
        await server.start(free_port(), host="127.0.0.1")
        try:
            assert await handshake(pki.ca)
            old_ca = tmp_path / "old-ca.crt"
            old_ca.write_bytes(pki.ca.read_bytes())
            renewed = make_pki(tmp_path / "tls")  # cert-manager rewrites the Secret: new files at the same paths
            assert not await handshake(renewed.ca)  # not reloaded yet
            assert server.reload_certificate() and not server.reload_certificate()
            assert await handshake(renewed.ca) and not await handshake(old_ca)
        finally:
            await server.stop()

    asyncio.run(scenario())
