"""Offline validation of FineTuneJob manifests: ``kubetune validate FILE...``.

Three layers, each reporting problems as ``spec.training.globalBatchSize: what
is wrong and what to do``:

1. :mod:`.schema`: the CRD's openAPIV3Schema with jsonschema, after the API
   server's pruning and defaulting;
2. :mod:`.cel`: every ``x-kubernetes-validations`` rule with cel-python, as
   admission would (transition rules on updates);
3. :mod:`.checks`: the pydantic model (what the trainer enforces), its errors
   mapped by :mod:`.problems`, plus checks only code can do, and warnings.

:mod:`.manifest` runs them together (one line per problem), :mod:`.cli` is the
command. This module re-exports what callers use.
"""
from __future__ import annotations

from ..documents import Unreadable
from .cel import RuleError, cel_problems, field_path, program, to_cel
from .checks import code_problems, model_problems, warnings
from .cli import EXIT_INVALID, EXIT_UNREADABLE, EXIT_VALID, load_documents, validate_file, validate_files_cli
from .manifest import validate_manifest, validate_update
from .problems import Problem, render_path
from .schema import crd_schema, draft4, prepare, schema_problems

__all__ = [
    "EXIT_INVALID", "EXIT_UNREADABLE", "EXIT_VALID", "Problem", "RuleError", "Unreadable", "cel_problems",
    "code_problems", "crd_schema", "draft4", "field_path", "load_documents", "model_problems", "prepare", "program",
    "render_path", "schema_problems", "to_cel", "validate_file", "validate_files_cli", "validate_manifest",
    "validate_update", "warnings",
]
