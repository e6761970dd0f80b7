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

    sub.add_parser("crd", help="print the FineTuneJob CustomResourceDefinition")

    args = parser.parse_args(argv)
    if args.command == "validate":
        from kubetune_trainer.validation import validate_files_cli

        return validate_files_cli(args.files)
    if args.command == "crd":
        from kubetune_trainer.crd import crd_yaml

        sys.stdout.write(crd_yaml())
        return 0
    parser.error(f"unknown command {args.command}")
    return 2


if __name__ == "__main__":
    sys.exit(main())
