"""End-to-end fixtures: S3 on moto, the API emulator, the real operator, and the pod executor.

    manifest --kubectl--> emulator --watch--> operator --creates--> Indexed Job
    --Job controller--> 2 Pods --executor (kubelet)--> torchrun processes --> trainer --> S3 (moto)
                                                                                  \\--> status reporter --> emulator

One emulated cluster, operator, executor and S3 server per module; tiny model
and data built once per session and uploaded to S3, so the pods fetch them
like they would on a cluster.
"""
from __future__ import annotations

import base64
import os
import sys
from pathlib import Path

import pytest
from e2e_jobs import BUCKET, KEY_ID, NAMESPACE, REGION, SECRET

# Every trainer process is single-threaded: 2 cores, 2 ranks (TESTING.md).
POD_ENV = {
    "OMP_NUM_THREADS": "1",
    "DS_ACCELERATOR": "cpu",
    "TOKENIZERS_PARALLELISM": "false",
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "CUDA_VISIBLE_DEVICES": "",
    # The trainer image ships DeepSpeed's ops prebuilt; here every pod has a fresh HOME, so
    # point them at the host's build cache instead of compiling the CPU comm op per pod.
    "TORCH_EXTENSIONS_DIR": os.environ.get("TORCH_EXTENSIONS_DIR") or os.path.join(
        os.path.expanduser("~/.cache/torch_extensions"), f"py{sys.version_info.major}{sys.version_info.minor}_cpu"),
    # Status patches at most every 0.1 s (default 10 s), so a short run shows progress mid-way: an 8-step
    # run of the tiny model can take under 0.5 s on a quiet machine.
    "KUBETUNE_STATUS_INTERVAL": "0.1",
    # Test instrumentation: rank 0 also appends progress and events to a file in the pod's folder.
    "KUBETUNE_PROGRESS_FILE": "{pod_dir}/progress.jsonl",
}


class S3:
    def __init__(self, endpoint: str):
        import boto3

        self.endpoint = endpoint
        self.client = boto3.client("s3", endpoint_url=endpoint, region_name=REGION,
                                   aws_access_key_id=KEY_ID, aws_secret_access_key=SECRET)

    def keys(self, prefix: str) -> list[str]:
        out = []
        for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix):
            out += [o["Key"] for o in page.get("Contents", [])]
        return out

    def upload_dir(self, local: Path, prefix: str) -> None:
        for path in sorted(local.rglob("*")):
            if path.is_file():
                self.client.upload_file(str(path), BUCKET, f"{prefix}/{path.relative_to(local)}")

    def download_dir(self, prefix: str, local: Path) -> Path:
        for key in self.keys(prefix.rstrip("/") + "/"):
            target = local / key[len(prefix.rstrip("/")) + 1:]
            target.parent.mkdir(parents=True, exist_ok=True)
            self.client.download_file(BUCKET, key, str(target))
        return local


@pytest.fixture(scope="module")
def s3():
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    store = S3(f"http://{host}:{port}")
    store.client.create_bucket(Bucket=BUCKET)
    yield store
    server.stop()


@pytest.fixture(scope="session")
def tiny_files(tmp_path_factory):
    from kubetune_trainer import tiny

    root = tmp_path_factory.mktemp("tiny")
    tiny.save_tiny_model(root / "model")
    tiny.write_instruction_dataset(root / "data" / "train.jsonl", n=96, seed=0)
    tiny.write_instruction_dataset(root / "data" / "eval.jsonl", n=16, seed=1)
    return root


@pytest.fixture(scope="module")
def s3_inputs(s3, tiny_files):
    s3.upload_dir(tiny_files / "model", "models/tiny")
    s3.upload_dir(tiny_files / "data", "data")
    return {"model": f"s3://{BUCKET}/models/tiny", "train": f"s3://{BUCKET}/data/train.jsonl", "eval": f"s3://{BUCKET}/data/eval.jsonl"}


@pytest.fixture(scope="module")
def cluster():
    from support.cluster import EmulatedCluster
    from support.emulator import Semantics

    # Faithful (every switch on, whatever KUBETUNE_TEST_SEMANTICS says): the emulator's Job controller makes
    # and accounts the pods, the pod executor is only their kubelet.
    with EmulatedCluster(semantics=Semantics()) as c:
        c.ensure_namespace(NAMESPACE)
        c.create({
            "apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s3-creds", "namespace": NAMESPACE},
            "data": {k: base64.b64encode(v.encode()).decode() for k, v in
                     {"AWS_ACCESS_KEY_ID": KEY_ID, "AWS_SECRET_ACCESS_KEY": SECRET}.items()},
        })
        yield c


@pytest.fixture(scope="module")
def operator(cluster):
    from support.cluster import reporting_settings

    # Rank 0 reports to the operator's endpoint on a local port (KUBETUNE_STATUS_INTERVAL is 0.1 s here).
    settings = reporting_settings(resync_seconds=5.0, log_format="plain")
    with cluster.operator(settings) as op:
        yield op


@pytest.fixture(scope="module")
def executor(cluster, tmp_path_factory):
    from executor import PodExecutor

    workdir = tmp_path_factory.mktemp("pods")
    env = dict(POD_ENV)
    with PodExecutor(cluster, workdir, extra_env=env) as ex:
        yield ex
    assert not [e for e in ex.errors if "Connection" not in e], ex.errors[-5:]


@pytest.fixture(scope="module")
def e2e(cluster, operator, executor, s3, s3_inputs):
    return {"cluster": cluster, "executor": executor, "s3": s3, "inputs": s3_inputs}



