"""spec.model.from on a cluster (issue 15): resolved to the earlier FineTuneJob's results, or refused at once.

Three layers, as everywhere in the operator: the pure resolution (``lineage.resolve``,
a table), the phase machine deciding on an observation that includes the earlier
job (``phases.decide``), and the real operator against the emulated API: a job
naming a finished job gets a ConfigMap whose manifest loads that job's adapter
on its base model, with the lineage annotation the trainer copies into
summary.json; one naming a missing or unfinished job fails with the reason.
"""
from __future__ import annotations

import datetime as dt
import json
import uuid

import pytest

from kubetune_api.model import LINEAGE_ANNOTATION
from kubetune_operator import builders, lineage, phases
from kubetune_operator.observe import Observation
from kubetune_operator.settings import OperatorSettings
from kubetune_trainer import k8s_status
from support import kubelet
from support.cluster import reporting_settings, wait_for
from support.manifests import job_manifest

NOW = dt.datetime(2026, 1, 1, 12, 0, 0, tzinfo=dt.UTC)
SETTINGS = OperatorSettings()
FROM = {"from": {"fineTuneJob": "earlier"}}
ADAPTER = "s3://out/earlier/final/adapter"
MERGED = "s3://out/earlier/final/merged"


def earlier(phase="Succeeded", method="lora", adapter=ADAPTER, merged=None, base="hf://org/model", reason=None):
    return lineage.Earlier(name="earlier", phase=phase, reason=reason, method=method, adapter_uri=adapter, merged_uri=merged,
                           summary_uri="s3://out/earlier/final/summary.json", base_model=base, step=100, namespace="ml", uid="u1")


# ------------------------------------------------------------- the pure resolution
RESOLVE = [
    # id, use, method.type of the new job, the earlier job, -> (model.source, model.adapter) or the refusal reason
    ("lora-continues-lora-adapter", "auto", "lora", earlier(), ("hf://org/model", ADAPTER)),
    ("qlora-continues-lora-adapter", "auto", "qlora", earlier(), ("hf://org/model", ADAPTER)),
    ("full-takes-merged", "auto", "full", earlier(merged=MERGED), (MERGED, None)),
    ("other-kind-takes-merged", "auto", "prompt-tuning", earlier(merged=MERGED), (MERGED, None)),
    ("merged-asked-for", "merged", "lora", earlier(merged=MERGED), (MERGED, None)),
    ("missing", "auto", "lora", None, lineage.FROM_JOB_NOT_FOUND),
    ("running", "auto", "lora", earlier(phase="Running"), lineage.FROM_JOB_NOT_SUCCEEDED),
    ("failed", "auto", "lora", earlier(phase="Failed", reason="OOMKilled"), lineage.FROM_JOB_NOT_SUCCEEDED),
    ("not-started", "auto", "lora", earlier(phase=None), lineage.FROM_JOB_NOT_SUCCEEDED),
    ("other-kind-no-merged", "auto", "ia3", earlier(), lineage.FROM_JOB_UNUSABLE),
    ("full-no-merged", "auto", "full", earlier(), lineage.FROM_JOB_UNUSABLE),
    ("adapter-asked-none-exported", "adapter", "lora", earlier(adapter=None, merged=MERGED), lineage.FROM_JOB_UNUSABLE),
    ("adapter-without-base", "adapter", "lora", earlier(base=None), lineage.FROM_JOB_UNUSABLE),
]


@pytest.mark.parametrize("use, method, known, want", [r[1:] for r in RESOLVE], ids=[r[0] for r in RESOLVE])
def test_resolve(use, method, known, want):
    model = {"from": {"fineTuneJob": "earlier", "use": use}, "dtype": "bfloat16"}
    got = lineage.resolve(model, method, known, name="earlier", namespace="ml")
    if isinstance(want, str):
        assert isinstance(got, lineage.Refusal) and got.reason == want, got
        assert got.message.startswith("spec.model.from") and "earlier" in got.message
        return
    assert isinstance(got, lineage.Resolution), got
    assert (got.model.get("source"), got.model.get("adapter")) == want
    assert "from" not in got.model and got.model["dtype"] == "bfloat16"  # the rest of spec.model is kept
    assert got.lineage["fineTuneJob"] == "earlier" and got.lineage["namespace"] == "ml" and got.lineage["step"] == 100
    assert got.lineage["use"] == ("adapter" if want[1] else "merged")


def test_refusal_messages_say_what_to_do():
    gone = lineage.resolve(FROM, "lora", None, name="earlier", namespace="ml")
    assert gone.message == ("spec.model.from.fineTuneJob: FineTuneJob earlier in namespace ml does not exist; "
                            "create and run it first, or fix the name")
    failed = lineage.resolve(FROM, "lora", earlier(phase="Failed", reason="OOMKilled"), name="earlier", namespace="ml")
    assert "is Failed (OOMKilled), not Succeeded" in failed.message and "after it succeeds" in failed.message
    other = lineage.resolve(FROM, "ia3", earlier(), name="earlier", namespace="ml")
    assert "lora adapter" in other.message and "method.type lora or qlora can" in other.message and "output.export" in other.message


def test_earlier_from_object_reads_the_status_the_trainer_wrote():
    obj = job_manifest("earlier", "ml", model={"source": "hf://org/model"})
    obj["metadata"]["uid"] = "u1"
    obj["status"] = {"phase": "Succeeded", "progress": {"step": 100},
                     "output": {"adapterUri": ADAPTER, "summaryUri": "s3://s", "baseModel": "s3://models/base"}}
    e = lineage.earlier_from_object(obj)
    assert (e.phase, e.method, e.adapter_uri, e.base_model, e.step, e.uid) == ("Succeeded", "lora", ADAPTER, "s3://models/base", 100, "u1")
    del obj["status"]["output"]["baseModel"]  # a job that finished before baseModel was reported: its spec says
    assert lineage.earlier_from_object(obj).base_model == "hf://org/model"


# ------------------------------------------------------------- the phase machine
def ftj(status=None):
    m = job_manifest("later", "ml", model=FROM)
    m["metadata"].update(uid=str(uuid.uuid4()), generation=1)
    if status is not None:
        m["status"] = status
    return m


def earlier_obj(phase="Succeeded"):
    obj = job_manifest("earlier", "ml")
    obj["status"] = {"phase": phase, "output": {"adapterUri": ADAPTER, "baseModel": "hf://org/model"}}
    return obj


PENDING = {"phase": "Pending", "reason": "Accepted", "attempt": 1, "restarts": 0, "observedGeneration": 1,
           "conditions": [{"type": "Pending", "status": "True", "reason": "Accepted", "message": "", "lastTransitionTime": "2026-01-01T11:59:00Z"}]}


def decide(f, earlier=None):
    return phases.decide(Observation.of(f, now=NOW, settings=SETTINGS, earlier=earlier))


@pytest.mark.parametrize("found, reason", [(None, "FromJobNotFound"), (earlier_obj("Running"), "FromJobNotSucceeded")],
                         ids=["missing", "running"])
def test_first_attempt_fails_at_once_when_the_earlier_job_cannot_be_used(found, reason):
    d = decide(ftj(PENDING), found)
    assert (d.status_patch.get("phase"), d.status_patch.get("reason")) == ("Failed", reason)
    assert d.create_attempt is None and d.resolution is None
    assert [(e.type, e.reason) for e in d.events] == [("Warning", reason)]


def test_first_attempt_is_created_with_the_resolution():
    d = decide(ftj(PENDING), earlier_obj())
    assert d.create_attempt == 1 and d.resolution is not None
    assert d.resolution.model["source"] == "hf://org/model" and d.resolution.model["adapter"] == ADAPTER


def test_a_restart_does_not_need_the_earlier_job_any_more():
    restarting = {**PENDING, "phase": "Restarting", "reason": "OOMKilled", "attempt": 2, "restarts": 1,
                  "conditions": [{"type": "Restarting", "status": "True", "reason": "OOMKilled", "message": "",
                                  "lastTransitionTime": "2026-01-01T11:00:00Z"}]}
    d = decide(ftj(restarting), None)  # deleted meanwhile: attempt 2 runs the spec stored at the start
    assert d.create_attempt == 2 and d.status_patch.get("phase") != "Failed"


def test_the_config_map_manifest_is_resolved_with_the_lineage_and_the_hashes_are_of_the_written_spec():
    f = ftj()
    resolution = lineage.resolve(f["spec"]["model"], "lora", lineage.earlier_from_object(earlier_obj()), name="earlier")
    assert isinstance(resolution, lineage.Resolution)
    manifest = builders.resolved_manifest(lineage.apply(f, resolution), SETTINGS)
    assert manifest["spec"]["model"]["source"] == "hf://org/model" and manifest["spec"]["model"]["adapter"] == ADAPTER
    assert "from" not in manifest["spec"]["model"]
    assert json.loads(manifest["metadata"]["annotations"][LINEAGE_ANNOTATION])["fineTuneJob"] == "earlier"
    # A user's own lineage annotation on an unresolved spec does not reach the trainer.
    f["metadata"]["annotations"] = {LINEAGE_ANNOTATION: "{}"}
    assert "annotations" not in builders.resolved_manifest(f, SETTINGS)["metadata"]


# ------------------------------------------------------------- the real operator
NS = "lineage"


@pytest.fixture(scope="module")
def operator(cluster):
    cluster.ensure_namespace(NS)
    settings = reporting_settings()  # rank 0 reports through the operator's endpoint, as in a pod
    with cluster.operator(settings, namespaces=(NS,)):
        yield settings


def status(cluster, name):
    return (cluster.get("FineTuneJob", NS, name) or {}).get("status") or {}


def wait_phase(cluster, name, phase, reason=None):
    def ok():
        s = status(cluster, name)
        return s if s.get("phase") == phase and (reason is None or s.get("reason") == reason) else None
    return wait_for(ok, 10, message=f"{name} -> {phase}/{reason} (now {status(cluster, name).get('phase')}/{status(cluster, name).get('reason')})")


def test_operator_resolves_a_finished_job_and_refuses_a_missing_or_unfinished_one(cluster, operator, tmp_path):
    # The earlier job runs to the end; rank 0's reporter says what it exported and on which base model.
    cluster.create(job_manifest("earlier", NS, model={"source": "hf://org/model"}, output={"uri": "s3://out/earlier"}))
    job = wait_for(lambda: cluster.get("Job", NS, "earlier-a1"), message="Job earlier-a1")
    pods = [kubelet.run(cluster, p) for p in kubelet.create_pods(cluster, job)]
    wait_phase(cluster, "earlier", "Running")
    token = tmp_path / "earlier-token"
    token.write_text(cluster.service_account_token(NS, "default", (builders.REPORT_AUDIENCE,), pod=pods[0]["metadata"]["name"]) + "\n")
    reporter = k8s_status.reporter_from_env({
        "KUBETUNE_JOB_NAME": "earlier", "KUBETUNE_JOB_NAMESPACE": NS, "KUBETUNE_ATTEMPT": "1",
        "KUBETUNE_REPORT_URL": operator.report_url, "KUBETUNE_REPORT_TOKEN": str(token), "KUBETUNE_STATUS_INTERVAL": "0",
        "KUBETUNE_REPORT_CA": operator.report_ca,
    })
    reporter.event({"event": "exported", "adapterUri": ADAPTER, "summaryUri": "s3://out/earlier/final/summary.json",
                    "baseModel": "hf://org/model", "metrics": {"evalLoss": 1.25}})
    reporter.close()
    kubelet.complete_job(cluster, cluster.get("Job", NS, "earlier-a1"), pods)
    wait_phase(cluster, "earlier", "Succeeded")

    # A job still running cannot be continued; neither can one that does not exist.
    cluster.create(job_manifest("running", NS))
    wait_for(lambda: cluster.get("Job", NS, "running-a1"), message="Job running-a1")
    cluster.create(job_manifest("too-early", NS, model={"from": {"fineTuneJob": "running"}}))
    cluster.create(job_manifest("orphan", NS, model={"from": {"fineTuneJob": "nobody"}}))
    cluster.create(job_manifest("later", NS, model={"from": {"fineTuneJob": "earlier"}}))

    st = wait_phase(cluster, "too-early", "Failed", "FromJobNotSucceeded")
    assert "FineTuneJob running in namespace lineage is" in st["message"] and "not Succeeded" in st["message"]
    st = wait_phase(cluster, "orphan", "Failed", "FromJobNotFound")
    assert st["message"].startswith("spec.model.from.fineTuneJob: FineTuneJob nobody in namespace lineage does not exist")
    assert cluster.get("Job", NS, "too-early-a1") is None and cluster.get("Job", NS, "orphan-a1") is None
    assert cluster.get("ConfigMap", NS, "orphan-config") is None  # refused before anything was created

    # The finished one resolves: the trainer's config loads its adapter on its base model and names it.
    wait_for(lambda: cluster.get("Job", NS, "later-a1"), message="Job later-a1")
    manifest = builders.manifest_from_config_map(cluster.get("ConfigMap", NS, "later-config"))
    assert manifest["spec"]["model"]["source"] == "hf://org/model" and manifest["spec"]["model"]["adapter"] == ADAPTER
    assert "from" not in manifest["spec"]["model"]
    recorded = json.loads(manifest["metadata"]["annotations"][LINEAGE_ANNOTATION])
    earlier_uid = cluster.get("FineTuneJob", NS, "earlier")["metadata"]["uid"]
    assert recorded["fineTuneJob"] == "earlier" and recorded["uid"] == earlier_uid and recorded["use"] == "adapter"
    assert recorded["summaryUri"] == "s3://out/earlier/final/summary.json"
    # The spec the user wrote is what later spec changes are compared with: no SpecChangeIgnored.
    assert not any(c["type"] == "SpecChangeIgnored" and c["status"] == "True" for c in status(cluster, "later").get("conditions") or [])
