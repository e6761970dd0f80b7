"""`kubetune api --backend cluster` with the official `openai` client, against the Kubernetes API emulator.

The emulator here authenticates every request by its bearer token and
authorizes it against RBAC-like grants (403 Forbidden otherwise, as the API
server would), and serves TokenReview and SelfSubjectAccessReview. The API
server's own token may only create TokenReviews; everything else it does, it
does with the caller's token. Uploads go to S3 (moto).
"""
from __future__ import annotations

import json
import time
from typing import Any

import attrs
import openai
import pytest
import yaml
from aiohttp import web
from openai_helpers import kubetune_api

from kubetune_api import spec as api
from support.cluster import TEST_AGENT, EmulatedCluster
from support.emulator import KubeEmulator, Semantics, _error

pytestmark = pytest.mark.timeout(120)

BUCKET = "kubetune-api"
SERVER_TOKEN = "server-token"
USERS = {SERVER_TOKEN: "system:serviceaccount:kubetune-system:kubetune-api", "alice-token": "alice", "bob-token": "bob"}
# (user, namespace or None for cluster-wide, group, resource, verb)
GRANTS = {
    ("system:serviceaccount:kubetune-system:kubetune-api", None, "authentication.k8s.io", "tokenreviews", "create"),
    *(("alice", "team-a", api.GROUP, api.PLURAL, v) for v in ("create", "get", "list", "patch", "delete")),
    ("alice", "team-a", "", "events", "list"),
    *(("bob", "team-a", api.GROUP, api.PLURAL, v) for v in ("get", "list")),
}
_VERBS = {"GET": "get", "POST": "create", "PATCH": "patch", "PUT": "update", "DELETE": "delete"}


def allowed(user: str, ns: str | None, group: str, resource: str, verb: str) -> bool:
    return (user, None, group, resource, verb) in GRANTS or (ns is not None and (user, ns, group, resource, verb) in GRANTS)


@attrs.define(kw_only=True)
class AuthenticatingEmulator(KubeEmulator):
    """Bearer tokens -> users, RBAC-like grants -> 403; TokenReview and SelfSubjectAccessReview served."""

    acting: list[tuple[str, str, str]] = attrs.field(factory=list, init=False)  # (user, verb, resource) of every authorized call

    async def _handle(self, request: Any) -> Any:
        if request.headers.get("User-Agent", "").startswith(TEST_AGENT):
            return await super()._handle(request)  # the test plays the cluster's admin
        auth = request.headers.get("Authorization", "")
        user = USERS.get(auth[len("Bearer "):]) if auth.startswith("Bearer ") else None
        if user is None:
            return await self._render_error(_error(401, "Unauthorized", "Unauthorized"))
        path = request.url.path
        if path == "/apis/authentication.k8s.io/v1/tokenreviews":
            if not allowed(user, None, "authentication.k8s.io", "tokenreviews", "create"):
                return await self._render_error(_error(403, "Forbidden", f'User "{user}" cannot create tokenreviews'))
            token = (request.data.get("spec") or {}).get("token")
            reviewed = USERS.get(token)
            status = {"authenticated": True, "user": {"username": reviewed}} if reviewed else {"authenticated": False, "error": "invalid bearer token"}
            return web.json_response({**request.data, "status": status}, status=201)
        if path == "/apis/authorization.k8s.io/v1/selfsubjectaccessreviews":
            attrs_ = request.data["spec"]["resourceAttributes"]
            ok = allowed(user, attrs_.get("namespace"), attrs_.get("group", ""), attrs_["resource"], attrs_["verb"])
            return web.json_response({**request.data, "status": {"allowed": ok}}, status=201)
        res = request.resource
        if res is not None and res.plural is not None:
            verb = "list" if request.method == "GET" and not request.name else _VERBS.get(request.method, "get")
            if not allowed(user, request.namespace, res.group or "", res.plural, verb):
                where = f' in the namespace "{request.namespace}"' if request.namespace else ""
                return await self._render_error(_error(
                    403, "Forbidden", f'{res.plural}.{res.group} is forbidden: User "{user}" cannot {verb} resource "{res.plural}" '
                                      f'in API group "{res.group}"{where}'))
            self.acting.append((user, verb, res.plural))
        return await super()._handle(request)


class AuthenticatingCluster(EmulatedCluster):
    def __init__(self) -> None:
        # The emulator's RBAC off: AuthenticatingEmulator authenticates these tokens and enforces GRANTS itself.
        super().__init__(semantics=Semantics(rbac=False))

    def _make_emulator(self) -> AuthenticatingEmulator:
        return AuthenticatingEmulator(keep_history=True, semantics=self.semantics)


@pytest.fixture(scope="module")
def cluster():
    with AuthenticatingCluster() as c:
        for ns in ("team-a", "team-b"):
            c.ensure_namespace(ns)
        yield c


@pytest.fixture(scope="module")
def s3_endpoint():
    import boto3
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id="k", aws_secret_access_key="s").create_bucket(Bucket=BUCKET)
    yield endpoint
    server.stop()


@pytest.fixture(scope="module")
def cluster_api(cluster, s3_endpoint, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("cluster-api")
    kubeconfig = tmp / "kubeconfig"
    kubeconfig.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "emu",
        "clusters": [{"name": "emu", "cluster": {"server": cluster.url}}],
        "users": [{"name": "api", "user": {"token": SERVER_TOKEN}}],
        "contexts": [{"name": "emu", "context": {"cluster": "emu", "user": "api"}}],
    }))
    (tmp / "models.yaml").write_text(yaml.safe_dump({"smollm2-135m": "hf://HuggingFaceTB/SmolLM2-135M-Instruct"}))
    (tmp / "template.yaml").write_text(yaml.safe_dump({
        "storage": {"endpoint": "http://minio.storage:9000", "addressingStyle": "path", "secretRef": {"name": "s3-creds"}},
        "distributed": {"gpusPerNode": 1}, "output": {"checkpointEvery": "10m"}}))
    env = {"AWS_ACCESS_KEY_ID": "k", "AWS_SECRET_ACCESS_KEY": "s", "AWS_DEFAULT_REGION": "us-east-1"}
    with kubetune_api("--backend", "cluster", "--kubeconfig", str(kubeconfig), "--files", f"s3://{BUCKET}/uploads",
                      "--output", f"s3://{BUCKET}/runs", "--s3-endpoint", s3_endpoint, "--models", str(tmp / "models.yaml"),
                      "--job-template", str(tmp / "template.yaml"), env=env, log=tmp / "server.log") as url:
        yield url


def _client(url: str, token: str, project: str | None = "team-a") -> openai.OpenAI:
    return openai.OpenAI(base_url=url, api_key=token, project=project, max_retries=0)


TRAIN = b'{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}\n'


def test_create_becomes_a_finetunejob_made_with_the_callers_identity(cluster, cluster_api):
    alice = _client(cluster_api, "alice-token")
    f = alice.files.create(file=("chat.jsonl", TRAIN), purpose="fine-tune")
    job = alice.fine_tuning.jobs.create(model="smollm2-135m", training_file=f.id, hyperparameters={"n_epochs": 2},
                                        metadata={"kubetune.method": "qlora"})
    assert job.status == "validating_files" and job.organization_id == "team-a"

    ftj = cluster.get("FineTuneJob", "team-a", job.id)
    assert ftj is not None and api.load_job(ftj).spec.training.epochs == 2
    spec = ftj["spec"]
    assert spec["model"]["source"] == "hf://HuggingFaceTB/SmolLM2-135M-Instruct" and spec["method"]["type"] == "qlora"
    assert spec["dataset"]["train"] == f"s3://{BUCKET}/uploads/team-a/files/{f.id}.jsonl"
    assert spec["output"]["uri"] == f"s3://{BUCKET}/runs/team-a/{job.id}" and spec["storage"]["secretRef"] == {"name": "s3-creds"}
    # Made as alice, not as the server: the server's own identity only reviewed tokens.
    acting = cluster.emulator.acting
    assert ("alice", "create", api.PLURAL) in acting
    assert not [a for a in acting if a[0].startswith("system:serviceaccount:")]  # the server only reviewed tokens
    assert [j.id for j in alice.fine_tuning.jobs.list()][0] == job.id

    # Pause and cancel become spec.suspend and an annotation on the FineTuneJob.
    alice.fine_tuning.jobs.pause(job.id)
    assert cluster.get("FineTuneJob", "team-a", job.id)["spec"]["suspend"] is True
    assert alice.fine_tuning.jobs.resume(job.id) and cluster.get("FineTuneJob", "team-a", job.id)["spec"]["suspend"] is False
    cancelled = alice.fine_tuning.jobs.cancel(job.id)
    assert cancelled.status == "cancelled" and cluster.get("FineTuneJob", "team-a", job.id)["spec"]["suspend"] is True


def test_a_caller_without_rbac_gets_403_and_a_bad_token_401(cluster, cluster_api):
    alice = _client(cluster_api, "alice-token")
    f = alice.files.create(file=("chat.jsonl", TRAIN), purpose="fine-tune")
    bob = _client(cluster_api, "bob-token")
    with pytest.raises(openai.PermissionDeniedError) as e:
        bob.fine_tuning.jobs.create(model="smollm2-135m", training_file=f.id)
    assert 'User "bob" cannot create resource "finetunejobs"' in e.value.message
    with pytest.raises(openai.PermissionDeniedError):
        bob.files.create(file=("chat.jsonl", TRAIN), purpose="fine-tune")
    assert bob.files.retrieve(f.id).id == f.id  # bob may read the namespace's jobs, so its files
    elsewhere = _client(cluster_api, "alice-token", project="team-b")
    with pytest.raises(openai.PermissionDeniedError):
        elsewhere.files.create(file=("chat.jsonl", TRAIN), purpose="fine-tune")
    with pytest.raises(openai.PermissionDeniedError):
        elsewhere.fine_tuning.jobs.list()
    with pytest.raises(openai.NotFoundError):  # files belong to a namespace
        elsewhere.fine_tuning.jobs.create(model="smollm2-135m", training_file=f.id)
    with pytest.raises(openai.AuthenticationError):
        _client(cluster_api, "stolen-token").fine_tuning.jobs.list()
    before = len([c for c in cluster.calls if c.verb == "create" and c.resource == api.PLURAL and c.status == 201])
    with pytest.raises(openai.NotFoundError) as e:
        alice.fine_tuning.jobs.create(model="gpt-4o-mini", training_file=f.id)
    assert e.value.param == "model"
    assert len([c for c in cluster.calls if c.verb == "create" and c.resource == api.PLURAL and c.status == 201]) == before


def test_status_changes_show_up_as_events(cluster, cluster_api):
    alice = _client(cluster_api, "alice-token")
    f = alice.files.create(file=("chat.jsonl", TRAIN), purpose="fine-tune")
    job = alice.fine_tuning.jobs.create(model="smollm2-135m", training_file=f.id)
    ftj = cluster.get("FineTuneJob", "team-a", job.id)

    def now(offset: int = 0) -> str:
        return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() + offset))

    # What the operator and rank 0 would write.
    cluster.patch_status("FineTuneJob", "team-a", job.id, {
        "phase": "Running", "startTime": now(1),
        "conditions": [{"type": "Running", "status": "True", "reason": "PodsRunning", "message": "2/2 pods running", "lastTransitionTime": now(1)}],
        "progress": {"step": 5, "totalSteps": 10, "loss": 1.25, "etaSeconds": 30, "updatedAt": now(2)},
        "lastCheckpoint": {"step": 4, "uri": f"s3://{BUCKET}/runs/team-a/{job.id}/checkpoints/step-000004", "time": now(2)},
    })
    cluster.create({"apiVersion": "v1", "kind": "Event", "metadata": {"name": f"{job.id}.1", "namespace": "team-a"},
                    "involvedObject": {"kind": "FineTuneJob", "name": job.id, "namespace": "team-a", "uid": ftj["metadata"]["uid"]},
                    "type": "Normal", "reason": "Started", "message": "attempt 1 started", "lastTimestamp": now(1)})
    running = alice.fine_tuning.jobs.retrieve(job.id)
    assert running.status == "running" and running.estimated_finish is not None
    messages = [e.message for e in alice.fine_tuning.jobs.list_events(job.id)]
    assert "Started: attempt 1 started" in messages and "Running (PodsRunning): 2/2 pods running" in messages
    assert "Step 5/10: training loss=1.2500" in messages
    [ckpt] = alice.fine_tuning.jobs.checkpoints.list(job.id).data
    assert ckpt.step_number == 4 and ckpt.fine_tuned_model_checkpoint.endswith("step-000004")

    cluster.patch_status("FineTuneJob", "team-a", job.id, {
        "phase": "Succeeded", "completionTime": now(3), "output": {"adapterUri": f"s3://{BUCKET}/runs/team-a/{job.id}/final/adapter"}})
    done = alice.fine_tuning.jobs.retrieve(job.id)
    assert done.status == "succeeded" and done.fine_tuned_model.endswith("/final/adapter") and done.finished_at
    events = alice.fine_tuning.jobs.list_events(job.id).data
    assert events[0].message.startswith("The job has successfully completed") or events[1].message.startswith("The job has successfully completed")
    assert "Phase Succeeded" in [e.message for e in events]

    cluster.patch_status("FineTuneJob", "team-a", job.id, {"phase": "Failed", "reason": "InvalidDataset", "message": "train row 1: no assistant message"})
    failed = alice.fine_tuning.jobs.retrieve(job.id)
    assert failed.status == "failed" and failed.error.code == "InvalidDataset" and failed.error.param == "training_file"
    assert json.loads(cluster.get("FineTuneJob", "team-a", job.id)["metadata"]["annotations"]["openai.kubetune.io/request"])["model"] == "smollm2-135m"
