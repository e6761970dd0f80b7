"""``kubetune api``: start the OpenAI-compatible fine-tuning API server."""
from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path
from typing import Any

import yaml


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--backend", choices=("local", "cluster"), default=os.environ.get("KUBETUNE_API_BACKEND", "local"),
                   help="local: jobs run on this machine with `kubetune run`; cluster: FineTuneJobs created with the caller's "
                        "Kubernetes identity (default: $KUBETUNE_API_BACKEND or local)")
    p.add_argument("--host", default=os.environ.get("KUBETUNE_API_HOST", "127.0.0.1"), help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=int(os.environ.get("KUBETUNE_API_PORT", "8000")), help="port (default 8000)")
    p.add_argument("--files", default=os.environ.get("KUBETUNE_API_FILES"),
                   help="where uploaded files go: a folder, or s3://bucket/prefix (cluster: required, pods read them there)")
    p.add_argument("--s3-endpoint", default=os.environ.get("KUBETUNE_API_S3_ENDPOINT"), help="S3 endpoint for --files s3://... (MinIO etc.)")
    p.add_argument("--s3-region", default=os.environ.get("KUBETUNE_API_S3_REGION"), help="S3 region for --files s3://...")
    p.add_argument("--models", default=os.environ.get("KUBETUNE_API_MODELS"),
                   help="YAML file mapping model names to sources (path, s3://, hf://), e.g. 'smollm2-135m: hf://HuggingFaceTB/SmolLM2-135M'")
    p.add_argument("--job-template", default=os.environ.get("KUBETUNE_API_JOB_TEMPLATE"),
                   help="YAML FineTuneJob spec fragment every job starts from (method, training, distributed, output, storage, ...)")
    g = p.add_argument_group("local backend")
    g.add_argument("--state-dir", default=os.environ.get("KUBETUNE_API_STATE", ".kubetune/api"),
                   help="jobs, their outputs and (without --files) uploaded files (default .kubetune/api)")
    g.add_argument("--max-running", type=int, default=1, help="jobs trained at once; the others wait queued (default 1)")
    g.add_argument("--api-key", default=os.environ.get("KUBETUNE_API_KEY"),
                   help="if set, every request must present it as its bearer token (default: $KUBETUNE_API_KEY, else none)")
    g = p.add_argument_group("cluster backend")
    g.add_argument("--namespace", default=os.environ.get("KUBETUNE_API_NAMESPACE"),
                   help="namespace for callers that name no project (the OpenAI-Project header) and are not a service account")
    g.add_argument("--output", default=os.environ.get("KUBETUNE_API_OUTPUT"),
                   help="s3://bucket/prefix under which each job writes <namespace>/<job id>/ (default: --files)")
    g.add_argument("--token-review", choices=("on", "off"), default=os.environ.get("KUBETUNE_API_TOKEN_REVIEW", "on"),
                   help="check each bearer token with a TokenReview first (needs tokenreviews create; default on)")
    g.add_argument("--kubeconfig", default=None, help="kubeconfig for the API server's address (default: in-cluster, else $KUBECONFIG)")


def _yaml_file(path: str | None, what: str) -> dict[str, Any]:
    if not path:
        return {}
    try:
        doc = yaml.safe_load(Path(path).read_text()) or {}
    except (OSError, yaml.YAMLError) as e:
        raise SystemExit(f"kubetune: error: {what} {path}: {e}") from None
    if not isinstance(doc, dict):
        raise SystemExit(f"kubetune: error: {what} {path}: expected a mapping")
    return doc


def build_backend(args: argparse.Namespace) -> Any:
    from .files import FileStore, S3FileStore

    catalogue = {str(k): str(v) for k, v in _yaml_file(args.models, "--models").items()}
    template = _yaml_file(args.job_template, "--job-template")
    template = template.get("spec", template)
    if args.backend == "local":
        from .local_backend import LocalBackend

        files = None
        if args.files:
            files = S3FileStore(args.files, args.s3_endpoint, args.s3_region) if args.files.startswith("s3://") else FileStore(args.files)
        return LocalBackend(args.state_dir, files, catalogue=catalogue, template=template, max_running=args.max_running)
    from .cluster_backend import ClusterBackend, kube_connection

    if not args.files or not args.files.startswith("s3://"):
        raise SystemExit("kubetune: error: --backend cluster needs --files s3://bucket/prefix: the trainer pods read the uploads from there")
    files = S3FileStore(args.files, args.s3_endpoint, args.s3_region)
    return ClusterBackend(kube_connection(args.kubeconfig), files, output=args.output or args.files, catalogue=catalogue,
                          template=template, default_namespace=args.namespace, token_review=args.token_review == "on")


def main(args: argparse.Namespace) -> int:
    import uvicorn

    from .server import create_app

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    backend = build_backend(args)
    if hasattr(backend, "start"):
        backend.start()
    app = create_app(backend, api_key=args.api_key if args.backend == "local" else None)
    print(f"kubetune: api ({args.backend} backend) on http://{args.host}:{args.port}/v1", file=sys.stderr, flush=True)
    try:
        uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
    finally:
        from .files import close_loader

        close_loader()  # the upload checks' worker process
        if hasattr(backend, "close"):
            backend.close()
    return 0
