"""Helpers shared by tests/chart: paths, the value sets, a helm wrapper, lookups.

A separate module (not conftest.py) so test modules can import it by a name
no other test folder uses.
"""
from __future__ import annotations

import subprocess
import threading
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "kubetune"

# Value sets the chart must render, lint and validate cleanly. Each is a
# realistic installation, not a toy: the names are used in test ids.
VALUE_SETS: dict[str, dict] = {
    "default": {},
    "namespaced": {
        "watch": {"scope": "namespaced", "namespaces": ["ml-team-a", "ml-team-b"]},
    },
    "ha": {"replicaCount": 2},
    # The tight install: two replicas, only two namespaces, a NetworkPolicy per job.
    "ha-namespaced": {
        "replicaCount": 2,
        "watch": {"scope": "namespaced", "namespaces": ["ml-team-a", "ml-team-b"]},
        "networkPolicy": {"enabled": True},
    },
    "servicemonitor": {
        "metrics": {"serviceMonitor": {"enabled": True, "interval": "15s", "scrapeTimeout": "10s",
                                       "labels": {"release": "prometheus"}}},
    },
    "custom-images": {
        "image": {"repository": "registry.example.com:5000/platform/kubetune-operator",
                  "digest": "sha256:" + "ab" * 32, "pullPolicy": "Always"},
        "imagePullSecrets": [{"name": "regcred"}],
        "jobDefaults": {
            "image": {"repository": "registry.example.com:5000/platform/kubetune-trainer", "tag": "0.1.0-cu128"},
            "imagePullPolicy": "Always",
            "imagePullSecrets": [{"name": "regcred"}, {"name": "gpu-images"}],
            "storage": {"endpoint": "http://minio.storage.svc:9000", "region": "us-east-1",
                        "secretName": "minio-credentials"},
        },
    },
    "no-status-reporter": {"jobDefaults": {"statusReporter": False}},
    # The report endpoint's certificate from cert-manager: the chart's own self-signed CA, or an issuer
    # of the platform; from a Secret the platform manages; or (explicitly) no TLS at all.
    "report-tls-cert-manager": {"reportTLS": {"source": "cert-manager"}},
    "report-tls-cluster-issuer": {"reportTLS": {"source": "cert-manager", "certManager": {
        "issuerRef": {"name": "platform-ca", "kind": "ClusterIssuer", "group": "cert-manager.io"},
        "duration": "720h", "renewBefore": "240h"}}},
    "report-tls-secret": {"reportTLS": {"source": "secret", "secretName": "corp-report-tls"}},
    "report-insecure-http": {"reportTLS": {"insecurePlainHTTP": True}},
    # OpenShift's restricted-v2 SCC hands out uids from the namespace's range
    # (1000680000 and up): larger than Helm's float-to-%v printing keeps exact.
    # Also every optional knob of the operator pod, and CRDs managed outside.
    "openshift-uids": {
        "jobDefaults": {"podSecurityContext": {"runAsUser": 1000680000, "runAsGroup": 1000680000, "fsGroup": 1000680000}},
        "podSecurityContext": {"runAsUser": 1000690000, "runAsGroup": 1000690000, "fsGroup": 1000690000},
        "operator": {"resyncSeconds": 86400, "maxBackoffSeconds": 2000000000},
        "commonLabels": {"team": "platform", "cost-center": "ml-1234"},
        "topologySpreadConstraints": [{"maxSkew": 1, "topologyKey": "topology.kubernetes.io/zone",
                                       "whenUnsatisfiable": "ScheduleAnyway"}],
        "extraVolumes": [{"name": "ca", "configMap": {"name": "corp-ca"}}],
        "extraVolumeMounts": [{"name": "ca", "mountPath": "/etc/ssl/corp", "readOnly": True}],
        "metrics": {"service": {"type": "LoadBalancer", "exposeOutsideCluster": True}},
        "crds": {"install": False},
        "rbac": {"userRoles": False},
        "networkPolicy": {"enabled": True},
        "replicaCount": 2,
    },
    "openshift-like": {
        "podSecurityContext": {"runAsUser": None, "runAsGroup": None, "fsGroup": None},
        "serviceAccount": {"create": True, "name": "kubetune-operator",
                           "annotations": {"eks.amazonaws.com/role-arn": "arn:aws:iam::123456789012:role/x"}},
        "metrics": {"service": {"enabled": False}},
    },
}


class Helm:
    def __init__(self, binary: Path, tmp: Path):
        self.binary = binary
        self.tmp = tmp
        self._n = 0
        self._lock = threading.Lock()

    def values_file(self, values: dict) -> Path:
        with self._lock:
            self._n += 1
            path = self.tmp / f"values-{self._n}.yaml"
        path.write_text(yaml.safe_dump(values))
        return path

    def run(self, *args: str, values: dict | None = None) -> subprocess.CompletedProcess:
        cmd = [str(self.binary), *args]
        if values is not None:
            cmd += ["-f", str(self.values_file(values))]
        return subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=ROOT)

    def template(self, values: dict, namespace: str = "kubetune-system", release: str = "kt", *extra: str) -> list[dict]:
        out = self.run("template", release, str(CHART), "--namespace", namespace, "--include-crds", *extra, values=values)
        assert out.returncode == 0, out.stderr
        # libyaml's loader: the pure-Python one takes ~1 s per rendering (the CRD).
        return [doc for doc in yaml.load_all(out.stdout, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader)) if doc]


def find(objs: list[dict], kind: str, name: str | None = None) -> list[dict]:
    return [o for o in objs if o["kind"] == kind and (name is None or o["metadata"]["name"] == name)]


def the(objs: list[dict], kind: str) -> dict:
    found = find(objs, kind)
    assert len(found) == 1, f"expected one {kind}, found {len(found)}"
    return found[0]


def container_env(deployment: dict) -> dict[str, str]:
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    return {e["name"]: e.get("value") for e in container.get("env", []) if "value" in e}


def mount_report_tls(objs: list[dict], settings, folder: Path):
    """``settings`` (parsed from the chart's env) as the operator's pod sees them: the chart's generated
    report-tls Secret written into ``folder``, which stands for the Deployment's mount of it."""
    import base64
    import dataclasses

    spec = the(objs, "Deployment")["spec"]["template"]["spec"]
    (volume,) = [v for v in spec["volumes"] if v["name"] == "report-tls"]
    (mount,) = [m for m in spec["containers"][0]["volumeMounts"] if m["name"] == "report-tls"]
    (secret,) = find(objs, "Secret", volume["secret"]["secretName"])
    for key, value in secret["data"].items():
        (folder / key).write_bytes(base64.b64decode(value))
    local = {f: getattr(settings, f).replace(mount["mountPath"], str(folder))
             for f in ("report_tls_cert", "report_tls_key", "report_ca")}
    return dataclasses.replace(settings, **local)


def https_post(url: str, ca_pem: str, connect_to: str = "127.0.0.1", timeout: float = 5.0) -> int:
    """POST ``url`` (an in-cluster Service URL) over TLS verified against ``ca_pem`` for the URL's host
    name, the TCP connection going to ``connect_to`` instead (the Service's stand-in): -> HTTP status."""
    import http.client
    import socket
    import ssl
    import urllib.parse

    parts = urllib.parse.urlsplit(url)
    context = ssl.create_default_context(cadata=ca_pem)

    class Connection(http.client.HTTPSConnection):
        def connect(self) -> None:
            sock = socket.create_connection((connect_to, self.port), self.timeout)
            self.sock = context.wrap_socket(sock, server_hostname=self.host)

    conn = Connection(str(parts.hostname), parts.port, timeout=timeout)
    try:
        conn.request("POST", parts.path, body=b"{}", headers={"Content-Type": "application/json"})
        return conn.getresponse().status
    finally:
        conn.close()
