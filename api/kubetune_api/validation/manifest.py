"""All layers on one document, one line per problem: a problem already
reported at a field path by an earlier layer is not repeated by a later one."""
from __future__ import annotations

from typing import Any

from .. import spec as api
from .. import sweep as sweep_api
from .cel import cel_problems
from .checks import code_problems, model_problems, sweep_problems
from .problems import Problem, merge, type_name
from .schema import crd_schema, prepare, schema_problems

KINDS = (api.KIND, sweep_api.KIND)


def validate_manifest(doc: Any) -> list[Problem]:
    """All problems of one FineTuneJob or FineTuneSweep document (an empty list: valid)."""
    if not isinstance(doc, dict):
        return [Problem("", f"a manifest must be a mapping, not {type_name(doc)}", "schema")]
    kind = sweep_api.KIND if doc.get("kind") == sweep_api.KIND else api.KIND
    schema = crd_schema(kind)
    pruned = prepare(schema, doc, defaults=False)
    defaulted = prepare(schema, doc, defaults=True)
    structural = schema_problems(defaulted, kind)
    rules = cel_problems(defaulted, schema_errors=structural, kind=kind)
    model = model_problems(pruned, kind)
    if kind == sweep_api.KIND:
        model += [p for p in code_problems(pruned) if not p.path.startswith("spec.")]
        if not (structural or rules or model):
            model += sweep_problems(pruned)
    else:
        model += code_problems(pruned)
    return merge(structural, rules, model)


def validate_update(old: dict[str, Any], new: dict[str, Any]) -> list[Problem]:
    """Problems of updating ``old`` to ``new`` (all rules, transition rules included)."""
    schema = crd_schema()
    new_d, old_d = prepare(schema, new), prepare(schema, old)
    structural = schema_problems(new_d)
    return merge(structural, cel_problems(new_d, old_d, schema_errors=structural), [])
