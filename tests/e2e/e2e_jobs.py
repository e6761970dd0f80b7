"""The end-to-end tests' names and their FineTuneJob (a module of its own: test
files import it; importing `conftest` by name finds whichever conftest came first)."""
from __future__ import annotations

from support.manifests import merged, wrap

BUCKET = "kubetune-e2e"
REGION = "us-east-1"
NAMESPACE = "e2e"
KEY_ID, SECRET = "e2e-access-key", "e2e-secret-key"


def finetunejob(name: str, inputs: dict, endpoint: str, **overrides) -> dict:
    spec = {
        "model": {"source": inputs["model"]},
        "dataset": {"train": inputs["train"], "eval": inputs["eval"], "maxSeqLength": 64},
        "method": {"type": "lora", "lora": {"r": 8}},
        "training": {"maxSteps": 8, "learningRate": 0.01, "globalBatchSize": 8, "microBatchSize": 4,
                     "precision": "fp32", "gradientCheckpointing": False, "evalEvery": 4},
        "distributed": {"nodes": 2, "gpusPerNode": 0, "rendezvousTimeoutSeconds": 120},
        "output": {"uri": f"s3://{BUCKET}/runs/{name}", "checkpointEvery": 4, "keepLast": 2},
        "storage": {"endpoint": endpoint, "region": REGION, "addressingStyle": "path", "secretRef": {"name": "s3-creds"}},
        "runPolicy": {"maxRestarts": 2, "backoffSeconds": 0, "terminationGraceSeconds": 30},
    }
    return wrap(merged(spec, **overrides), name=name, namespace=NAMESPACE)
