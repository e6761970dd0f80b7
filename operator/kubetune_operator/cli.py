"""The `kubetune` command line.

Sub-commands import what they need lazily so that `kubetune validate` and
`kubetune crd` work without torch or a Kubernetes client.
"""
from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="kubetune", description="Fine-tune LLMs on Kubernetes.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("validate", help="validate FineTuneJob manifests offline (schema, CEL rules, code checks)")
    p.add_argument("files", nargs="+")
    p.add_argument("--gpu", metavar="NAME",
                   help="also check that each job fits in this GPU's memory (e.g. H100-80GB, A100-40GB, L4); exit 3 if not")
    p.add_argument("--gpu-memory", metavar="QUANTITY", help="GPU memory per GPU instead of a name, e.g. 80Gi")

    p = sub.add_parser("plan", help="memory plan of FineTuneJobs: bytes per GPU by term, the chosen settings, the fit")
    p.add_argument("files", nargs="+", help="FineTuneJob manifests (only the model's config.json is read)")
    p.add_argument("--gpu", metavar="NAME", help="GPU to plan for, e.g. H100-80GB (default: the nodeSelector's GPU, if any)")
    p.add_argument("--gpu-memory", metavar="QUANTITY", help="GPU memory per GPU instead of a name, e.g. 80Gi")

    sub.add_parser("crd", help="print the FineTuneJob CustomResourceDefinition")

    p = sub.add_parser("run", help="run a FineTuneJob or a FineTuneSweep on this machine (CPU or local GPUs) with the real trainer")
    p.add_argument("file", help="FineTuneJob or FineTuneSweep manifest (YAML); for a sweep, --set and --output change its template")
    p.add_argument("--output", help="override spec.output.uri: a local folder or s3://bucket/prefix")
    p.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="override a spec field, e.g. --set training.maxSteps=10 (repeatable; values are YAML)")
    p.add_argument("--run-dir", help="where the resolved manifest, progress and logs go (default .kubetune/runs/<name>)")
    p.add_argument("--scratch", help="node-local scratch root: model cache, local checkpoints (default ~/.cache/kubetune/scratch)")

    p = sub.add_parser("render", help="print the Kubernetes objects the operator would create for a FineTuneJob")
    p.add_argument("file", help="FineTuneJob manifest (YAML)")
    p.add_argument("--namespace", "-n", help="namespace to render into (default: the manifest's, else none)")
    p.add_argument("--attempt", type=int, default=1, help="attempt number of the batch Job (default 1)")

    p = sub.add_parser("data", help="look at a FineTuneJob's data as the trainer will see it")
    data_sub = p.add_subparsers(dest="data_command", required=True)
    p = data_sub.add_parser("preview", help="the first rows as trained on (loss tokens marked) and the dataset statistics")
    p.add_argument("file", help="FineTuneJob manifest (YAML)")
    p.add_argument("--rows", type=int, default=3, metavar="N", help="rows to show from the train and from the eval set (default 3)")
    p.add_argument("--json", action="store_true", help="per row: input_ids, attention_mask, labels as the trainer's collator makes them")
    p.add_argument("--scratch", help="where fetched models and data are cached (default $KUBETUNE_SCRATCH or ~/.cache/kubetune/scratch)")

    p = sub.add_parser("report", help="metrics table (base vs tuned), report and plots of a job's output, finished or running")
    p.add_argument("output", help="the job's output.uri: a local folder or s3://bucket/prefix")
    p.add_argument("--out", metavar="DIR", help="where report.md, report.html and plots/ go (default ./<job>-report)")
    p.add_argument("--endpoint", help="S3 endpoint URL (MinIO, Ceph, GCS; default: $AWS_ENDPOINT_URL or AWS)")
    p.add_argument("--region", help="S3 region")
    p.add_argument("--rows", type=int, default=5, metavar="N", help="rows where base and tuned differ, in the report (default 5)")

    p = sub.add_parser("operator", help="run the operator (in a pod: its service account; elsewhere: the current kubeconfig)")
    p.add_argument("--namespace", "-n", action="append", default=[], metavar="NS",
                   help="watch this namespace (repeatable, globs allowed); default: $KUBETUNE_WATCH_NAMESPACES, else cluster-wide")
    p.add_argument("--all-namespaces", "-A", action="store_true", help="watch the whole cluster")
    p.add_argument("--peering", metavar="NAME", help="Kopf peering object shared by replicas (default: $KUBETUNE_PEERING_NAME or 'kubetune')")
    p.add_argument("--standalone", action="store_true", help="no peering: run as the only replica")
    p.add_argument("--priority", type=int, metavar="N",
                   help="peering priority: the live replica with the highest acts (default: $KUBETUNE_PEERING_PRIORITY, else random)")
    p.add_argument("--metrics-port", type=int, metavar="PORT", help="Prometheus /metrics port, 0 disables (default: $KUBETUNE_METRICS_PORT or 9090)")
    p.add_argument("--health-port", type=int, metavar="PORT", help="liveness /healthz port, 0 disables (default: $KUBETUNE_HEALTH_PORT or 8080)")
    p.add_argument("--verbose", "-v", action="store_true", help="debug logging")

    p = sub.add_parser("api", help="serve the fine-tuning part of the OpenAI REST API (files, fine-tuning jobs) for the openai client")
    from kubetune_operator.openai_api.main import add_arguments

    add_arguments(p)

    args = parser.parse_args(argv)
    if args.command == "validate":
        from kubetune_api.validation import validate_files_cli

        code = validate_files_cli(args.files)
        if code == 0 and (args.gpu or args.gpu_memory):
            from kubetune_api.memory_cli import check_memory_cli

            code = check_memory_cli(args.files, args.gpu, args.gpu_memory)
        return code
    if args.command == "plan":
        from kubetune_api.memory_cli import plan_cli

        return plan_cli(args.files, args.gpu, args.gpu_memory)
    if args.command == "crd":
        from kubetune_api.crd import crd_yaml

        sys.stdout.write(crd_yaml())
        return 0
    if args.command == "run":
        from kubetune_operator.localrun import main as run_main

        return run_main(args)
    if args.command == "render":
        from kubetune_operator.render import main as render_main

        return render_main(args)
    if args.command == "data":
        try:
            from kubetune_trainer.preview import preview
        except ImportError as e:  # the operator image has no trainer
            print(f"kubetune data preview needs the trainer (pip install 'kubetune[trainer]'): {e}", file=sys.stderr)
            return 2
        return int(preview(args.file, rows=args.rows, as_json=args.json, scratch=args.scratch))
    if args.command == "report":
        try:
            from kubetune_trainer.report import main as report_main
        except ImportError as e:  # the operator image has no trainer
            print(f"kubetune report needs the trainer extra (pip install 'kubetune[trainer]'): {e}", file=sys.stderr)
            return 2
        return int(report_main(args.output, args.out, endpoint=args.endpoint, region=args.region, rows=args.rows))
    if args.command == "operator":
        from kubetune_operator.runner import main as operator_main

        return operator_main(args)
    if args.command == "api":
        from kubetune_operator.openai_api.main import main as api_main

        return api_main(args)
    parser.error(f"unknown command {args.command}")
    return 2


if __name__ == "__main__":
    sys.exit(main())
