"""The committed CRD: generated from spec.py, accepted by the Kubernetes schema, structural, CEL-clean."""
from __future__ import annotations

import copy
import re

import jsonschema
import kubernetes_validate
import pytest
import yaml
from api_manifests import REPO

from kubetune_api import crd
from kubetune_api import spec as api
from kubetune_api.validation import crd_schema, field_path, program

K8S_VERSION = "1.37"


@pytest.fixture(scope="module")
def committed() -> dict:
    return yaml.safe_load((REPO / crd.CRD_PATHS[0]).read_text())


@pytest.mark.parametrize(("path", "text"), crd.generated_files(), ids=[str(p) for p, _ in crd.generated_files()])
def test_committed_crd_matches_generated(path, text):
    committed_text = (REPO / path).read_text()
    assert committed_text == text, (
        f"{path} is stale: the API model changed; run `{crd.REGENERATE_COMMAND}` and commit every CRD copy"
    )


def test_sweep_crd_passes_kubernetes_validate_strict():
    sweep_crd = yaml.safe_load((REPO / crd.SWEEP_CRD_PATHS[0]).read_text())
    assert kubernetes_validate.validate(sweep_crd, K8S_VERSION, strict=True) == K8S_VERSION


def test_check_mode_reports_stale_copies(tmp_path):
    for p, text in crd.generated_files():
        (tmp_path / p).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / p).write_text(text)
    assert crd.stale_files(tmp_path) == []
    (tmp_path / crd.CRD_PATHS[1]).write_text(crd.crd_yaml().replace("ftjob", "ftjb"))
    assert crd.stale_files(tmp_path) == [crd.CRD_PATHS[1]]


def test_kubetune_crd_prints_the_generated_crd(capsys):
    from kubetune_operator.cli import main

    assert main(["crd"]) == 0
    assert capsys.readouterr().out == crd.crd_yaml()


def test_crd_passes_kubernetes_validate_strict(committed):
    assert kubernetes_validate.validate(committed, K8S_VERSION, strict=True) == K8S_VERSION


def test_strict_validation_would_catch_a_misspelt_schema_keyword(committed):
    # proves the check above can fail: strict mode rejects unknown keys in JSONSchemaProps
    broken = copy.deepcopy(committed)
    spec = broken["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    spec["x-kubernetes-validation"] = spec.pop("x-kubernetes-validations")
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, K8S_VERSION, strict=True)


def test_crd_names_columns_and_subresources(committed):
    s = committed["spec"]
    assert committed["metadata"]["name"] == "finetunejobs.kubetune.io"
    assert s["group"] == "kubetune.io" and s["scope"] == "Namespaced"
    assert s["names"]["kind"] == "FineTuneJob" and s["names"]["plural"] == "finetunejobs"
    assert s["names"]["shortNames"] == ["ftj", "ftjob"]
    assert {"all", "kubetune"} <= set(s["names"]["categories"])
    (version,) = s["versions"]
    assert version["name"] == "v1alpha1" and version["served"] and version["storage"]
    assert version["subresources"] == {"status": {}}
    columns = {c["name"]: c for c in version["additionalPrinterColumns"]}
    default_columns = [c["name"] for c in version["additionalPrinterColumns"] if not c.get("priority")]
    assert default_columns == ["Phase", "Method", "Nodes", "Progress", "Loss", "ETA", "Age"]
    schema = version["schema"]["openAPIV3Schema"]
    for c in columns.values():
        if c["jsonPath"].startswith(".metadata"):
            continue
        node = schema
        for part in c["jsonPath"].strip(".").split("."):
            node = node["properties"][part]  # every column points at a real field
        assert node["type"] == c["type"] or (node["type"] == "number" and c["type"] == "number")


def _walk(node, path=""):
    yield path, node
    for name, sub in (node.get("properties") or {}).items():
        yield from _walk(sub, f"{path}.{name}")
    if isinstance(node.get("items"), dict):
        yield from _walk(node["items"], f"{path}[*]")
    if isinstance(node.get("additionalProperties"), dict):
        yield from _walk(node["additionalProperties"], f"{path}[key]")


FORBIDDEN = ("$ref", "anyOf", "allOf", "oneOf", "not", "definitions", "$defs", "title", "const")


def test_schema_is_structural_and_explained():
    schema = crd_schema()
    for path, node in _walk(schema):
        for key in FORBIDDEN:
            assert key not in node, f"{path or '<root>'} has {key}: not structural"
        if node.get("x-kubernetes-int-or-string"):
            assert "type" not in node, path
        elif path != ".metadata":
            assert node.get("type") in ("object", "array", "string", "integer", "number", "boolean"), path
        assert node.get("additionalProperties") is not False, path
        if node.get("type") == "object" and "properties" in node and path != "":
            for name, sub in node["properties"].items():
                assert sub.get("description"), f"{path}.{name} has no description (kubectl explain shows nothing)"


def test_defaults_validate_against_their_own_schema():
    # the API server refuses a CRD whose default does not validate (structural defaulting)
    from kubetune_api.validation import draft4

    count = 0
    for _path, node in _walk(crd_schema()):
        if "default" in node:
            jsonschema.Draft4Validator(draft4(node)).validate(node["default"])
            count += 1
    assert count > 50


def test_spec_strings_lists_and_maps_are_bounded():
    """Unbounded strings/lists make the API server's CEL cost estimate explode: bound all of spec."""
    spec = crd_schema()["properties"]["spec"]
    for path, node in _walk(spec, "spec"):
        if node.get("x-kubernetes-preserve-unknown-fields") or "enum" in node:
            continue
        kind = node.get("type")
        if kind == "string" or node.get("x-kubernetes-int-or-string"):
            assert "maxLength" in node or "pattern" in node and node["pattern"].startswith("^("), path
            if kind == "string":
                assert "maxLength" in node, path
        elif kind == "array":
            assert "maxItems" in node, path
        elif kind == "object" and isinstance(node.get("additionalProperties"), dict):
            assert "maxProperties" in node, path


def _max_chars(node) -> int:
    """An upper bound on the characters of a value of this schema (keys and scalars), from its bounds."""
    if node.get("x-kubernetes-preserve-unknown-fields"):
        return 0  # invisible to CEL
    kind = node.get("type")
    if "enum" in node:
        return max(len(str(v)) for v in node["enum"])
    if kind == "string" or node.get("x-kubernetes-int-or-string"):
        return node.get("maxLength", 20)
    if kind in ("integer", "number", "boolean"):
        return 20
    if kind == "array":
        return node["maxItems"] * _max_chars(node["items"])
    if isinstance(node.get("additionalProperties"), dict):
        return node["maxProperties"] * (317 + _max_chars(node["additionalProperties"]))
    return sum(len(k) + _max_chars(v) for k, v in node.get("properties", {}).items())


def test_cel_cost_of_spec_equality_is_far_below_the_api_server_limits():
    """The immutability rules compare spec fields; CEL's estimated cost of traversing strings is 0.1 per
    character. Even a traversal of the largest possible spec must stay far below the per-expression
    static limit (10,000,000) and the CRD total (100,000,000) that the API server enforces."""
    spec = crd_schema()["properties"]["spec"]
    traversal = 0.1 * _max_chars(spec)
    rules = len(spec["x-kubernetes-validations"])
    assert traversal < 1_000_000  # also under the 1,000,000 runtime limit per evaluation
    assert traversal * rules < 100_000_000


def _rules():
    for path, node in _walk(crd_schema()):
        for rule in node.get("x-kubernetes-validations", []):
            yield path, node, rule


def test_every_cel_rule_compiles_and_names_an_existing_field():
    rules = list(_rules())
    assert len(rules) >= 40
    for path, node, rule in rules:
        program(rule["rule"])
        if "messageExpression" in rule:
            program(rule["messageExpression"])
        assert rule["message"] and "\n" not in rule["message"], path
        target = node
        for part in field_path(rule.get("fieldPath", "")):
            if path == "" and part in ("metadata", "name"):
                target = {"properties": {"name": {}}}
                continue
            assert part in target.get("properties", {}), f"{path}: fieldPath {rule['fieldPath']} does not exist"
            target = target["properties"][part]


def test_every_spec_field_but_suspend_and_run_policy_is_immutable():
    spec = crd_schema()["properties"]["spec"]
    immutable = {
        r["fieldPath"].lstrip(".")
        for r in spec["x-kubernetes-validations"]
        if re.search(r"\boldSelf\b", r["rule"])
    }
    assert immutable == set(spec["properties"]) - set(api.MUTABLE_SPEC_FIELDS)
    for r in spec["x-kubernetes-validations"]:
        if "oldSelf" in r["rule"]:
            assert "immutable once created; create a new FineTuneJob" in r["message"]


def test_zero_stage_is_int_or_string_in_the_crd():
    z = crd_schema()["properties"]["spec"]["properties"]["distributed"]["properties"]["zeroStage"]
    assert z["x-kubernetes-int-or-string"] is True
    assert (z["minimum"], z["maximum"], z["pattern"]) == (0, 3, api.ZERO_STAGE_PATTERN)


FULL_SPEC = {
    "model": {"source": "hf://org/model", "revision": "abc123", "dtype": "bfloat16", "trustRemoteCode": False,
              "attention": "sdpa"},
    "dataset": {"train": "s3://data-bucket/train.jsonl", "eval": "s3://data-bucket/eval.jsonl", "evalFraction": 0.1,
                "format": "chat", "maxSeqLength": 1024, "truncation": "drop", "packing": False,
                "trainOnPrompt": True, "badRows": "skip", "shuffle": False},
    "training": {"maxSteps": 100, "learningRate": 0.001, "globalBatchSize": 32, "microBatchSize": 2,
                 "scheduler": "linear", "warmupRatio": 0.1, "weightDecay": 0.01, "maxGradNorm": 0.5, "seed": 1,
                 "precision": "bf16", "gradientCheckpointing": False, "evalEvery": 10, "logEvery": 5,
                 "generationEval": {"samples": 8, "maxNewTokens": 16}, "ligerKernels": True, "tracker": "tensorboard"},
    "distributed": {"nodes": 2, "gpusPerNode": 8, "processesPerNode": 8, "zeroStage": 3, "offload": "parameters",
                    "rendezvousTimeoutSeconds": 600},
    "output": {"uri": "s3://out-bucket/run", "checkpointEvery": "1h", "keepLast": 3, "export": "auto"},
    "storage": {"endpoint": "https://s3.example.com", "region": "eu-west-1", "addressingStyle": "path",
                "secretRef": {"name": "s3"}, "hubSecretRef": {"name": "hf"}},
    "image": "registry.example.com/trainer:1", "imagePullPolicy": "IfNotPresent", "imagePullSecrets": ["regcred"],
    "resources": {"requests": {"cpu": 16, "memory": "200Gi"}, "limits": {"memory": "220Gi"}, "shmSize": "32Gi",
                  "scratchSize": "500Gi"},
    "env": [{"name": "NCCL_DEBUG", "value": "INFO"}],
    "nodeSelector": {"pool": "gpu"},
    "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"},
                    {"key": "spot", "operator": "Equal", "value": "true", "effect": "NoExecute",
                     "tolerationSeconds": 60}],
    "affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": []}}},
    "podAnnotations": {"sidecar.istio.io/inject": "false"}, "podLabels": {"team": "a"},
    "serviceAccountName": "trainer", "priorityClassName": "high", "schedulerName": "default-scheduler",
    "queueName": "team-a", "suspend": True,
    "runPolicy": {"maxRestarts": 1, "backoffSeconds": 5, "activeDeadlineSeconds": 86400,
                  "ttlSecondsAfterFinished": 60, "terminationGraceSeconds": 120},
}
METHODS = {
    "full": {"type": "full"},
    "lora": {"type": "lora", "lora": {"r": 8, "alpha": 16, "dropout": 0.1, "targetModules": ["q_proj", "v_proj"],
                                      "modulesToSave": ["lm_head"], "useDora": True, "useRslora": True}},
    "qlora": {"type": "qlora", "lora": {"r": 8}, "quantization": {"quantType": "fp4", "doubleQuant": False,
                                                                    "computeDtype": "bfloat16"}},
    "prompt-tuning": {"type": "prompt-tuning", "promptTuning": {"numVirtualTokens": 8, "init": "text",
                                                                "initText": "Classify:"}},
    "prefix-tuning": {"type": "prefix-tuning", "prefixTuning": {"numVirtualTokens": 8, "projection": True}},
    "ia3": {"type": "ia3", "ia3": {"targetModules": ["k_proj", "down_proj"], "feedforwardModules": ["down_proj"]}},
}
STATUS = {
    "phase": "Running", "reason": "TrainingStarted", "message": "step 10/100",
    "conditions": [{"type": "Running", "status": "True", "reason": "TrainingStarted", "message": "ok",
                    "lastTransitionTime": "2026-01-01T00:00:00Z", "observedGeneration": 1}],
    "progress": {"step": 10, "totalSteps": 100, "epoch": 0.1, "percent": 10.0, "loss": 1.5, "evalLoss": 1.6,
                 "learningRate": 0.001, "tokensPerSecond": 12000.5, "mfu": 0.4, "etaSeconds": 900,
                 "updatedAt": "2026-01-01T00:00:00Z"},
    "lastCheckpoint": {"step": 10, "uri": "s3://out-bucket/run/checkpoints/step-000010", "time": "2026-01-01T00:00:00Z"},
    "restarts": 0, "attempt": 1, "activeJob": "full-job-a1", "startTime": "2026-01-01T00:00:00Z",
    "observedGeneration": 1, "output": {"metrics": {"evalLoss": 1.2}},
}


@pytest.mark.parametrize("method", METHODS)
def test_every_rule_evaluates_on_a_manifest_with_every_field_set(method):
    """cel-python does not type-check like the API server; running every rule on every field catches
    rules that would fail at run time (a double compared with an int, a missing has())."""
    from kubetune_api.validation import cel_problems, prepare, validate_manifest, validate_update

    spec = copy.deepcopy(FULL_SPEC)
    spec["method"] = copy.deepcopy(METHODS[method])
    if method in ("prompt-tuning", "prefix-tuning"):
        spec["distributed"].update(zeroStage="auto", offload="none")
    job = {"apiVersion": api.API_VERSION, "kind": api.KIND, "metadata": {"name": f"{method}-job"},
           "spec": spec, "status": STATUS}
    assert validate_manifest(job) == []
    assert cel_problems(prepare(crd_schema(), job), prepare(crd_schema(), job)) == []  # with transition rules
    changed = copy.deepcopy(job)
    changed["spec"]["suspend"] = False
    changed["spec"]["runPolicy"]["maxRestarts"] = 9
    assert validate_update(job, changed) == []
    api.load_job(job)
