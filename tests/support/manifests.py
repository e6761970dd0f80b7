"""FineTuneJob manifests for tests."""

def job_manifest(name, namespace, **spec_overrides):
    """A valid 2-node x 8-GPU LoRA job; keyword arguments replace top-level spec fields."""
    spec = {
        "model": {"source": "hf://org/model"},
        "dataset": {"train": "s3://data/train.jsonl"},
        "training": {"maxSteps": 100, "globalBatchSize": 16},
        "distributed": {"nodes": 2, "gpusPerNode": 8},
        "output": {"uri": "s3://out/run"},
        "storage": {"secretRef": {"name": "s3-creds"}},
        "runPolicy": {"maxRestarts": 2, "backoffSeconds": 0},
    }
    for k, v in spec_overrides.items():
        spec[k] = v
    return {"apiVersion": "kubetune.io/v1alpha1", "kind": "FineTuneJob", "metadata": {"name": name, "namespace": namespace}, "spec": spec}
