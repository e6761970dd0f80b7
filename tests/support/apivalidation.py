"""Server-side validation as the API server does it, for the emulator.

Built-in objects: the OpenAPI schemas that ``kubernetes-validate`` ships
(https://kubernetes.io/docs/reference/using-api/api-concepts/#field-validation:
unknown fields are dropped unless the request asks ``fieldValidation=Strict``)
plus a few of the API server's semantic checks that schemas cannot express
(object names, label values, Job and Pod rules the operator could break).
A refusal is 422 ``Invalid`` with the API server's Status shape:
``<Kind>.<group> "<name>" is invalid: <field>: <message>`` and
``details.causes[] = {reason, message, field}``.

FineTuneJobs (https://kubernetes.io/docs/tasks/extend-kubernetes/custom-resources/custom-resource-definitions/):
unknown fields are pruned, schema defaults applied, then the structural schema
and the ``x-kubernetes-validations`` CEL rules (transition rules on updates)
checked, with the project's own ``kubetune_api.validation`` (the same rules the
CRD carries).
"""
from __future__ import annotations

import copy
import functools
import json
import re
from typing import Any

import jsonschema
import kmock

_DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_DNS_1035 = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
_LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")
K8S_VERSION = "1.35"


def invalid(kind: str, group: str, name: str, causes: list[dict[str, str]]) -> kmock.KubernetesError:
    what = f"{kind}.{group}" if group else kind
    parts = [f"{c['field']}: {c['message']}" if c.get("field") else c["message"] for c in causes]
    listed = parts[0] if len(parts) == 1 else "[" + ", ".join(parts) + "]"
    return kmock.KubernetesError(status=422, reason="Invalid", message=f'{what} "{name}" is invalid: {listed}',
                                 details={"name": name, "group": group, "kind": kind, "causes": causes})


def _cause(field: str, message: str, reason: str = "FieldValueInvalid") -> dict[str, str]:
    return {"reason": reason, "message": message, "field": field}


@functools.lru_cache(maxsize=64)
def _validator(kind: str, api_version: str, strict: bool) -> Any:
    from kubernetes_validate import utils
    from referencing import Registry, Resource

    group_version = re.sub(r"^([^./]*)(?:\.[^/]*)?/", r"\1-", api_version)
    folder = f"v{K8S_VERSION}.0-local" + ("-strict" if strict else "")
    try:
        schema = utils.schema_contents(f"kubernetes-json-schema/{folder}/{kind.lower()}-{group_version}.json", K8S_VERSION)
    except (FileNotFoundError, utils.VersionNotSupportedError):
        return None
    defs = utils.schema_contents(f"kubernetes-json-schema/{folder}/_definitions.json", K8S_VERSION)
    registry = Resource.from_contents(defs) @ (Resource.from_contents(schema) @ Registry())
    return jsonschema.validators.Draft202012Validator(schema, registry=registry)


def _path(err: jsonschema.ValidationError) -> str:
    out = ""
    for p in err.absolute_path:
        out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else str(p))
    return out


def _schema_causes(kind: str, obj: dict[str, Any], strict: bool) -> list[dict[str, str]]:
    v = _validator(kind, obj.get("apiVersion") or "v1", strict)
    if v is None:
        return []
    causes = []
    for err in sorted(v.iter_errors(obj), key=lambda e: _path(e)):
        if err.validator == "additionalProperties":
            causes.append(_cause(_path(err), err.message, "FieldValueInvalid"))
        elif err.validator == "required":
            missing = err.message.split("'")[1] if "'" in err.message else err.message
            causes.append(_cause(f"{_path(err)}.{missing}".lstrip("."), "Required value", "FieldValueRequired"))
        else:
            causes.append(_cause(_path(err), f"Invalid value: {json.dumps(err.instance)[:80]}: {err.message}"))
    return causes


def _name_causes(kind: str, meta: dict[str, Any]) -> list[dict[str, str]]:
    name = meta.get("name") or ""
    causes = []
    if kind in ("Service",):
        if len(name) > 63 or not _DNS_1035.match(name):
            causes.append(_cause("metadata.name", f'Invalid value: "{name}": a DNS-1035 label must consist of lower case '
                                 "alphanumeric characters or '-', start with an alphabetic character, and end with an "
                                 "alphanumeric character, at most 63 characters"))
    elif kind not in ("Event",) and (len(name) > 253 or not _DNS_SUBDOMAIN.match(name)):
        causes.append(_cause("metadata.name", f'Invalid value: "{name}": a lowercase RFC 1123 subdomain must consist of '
                             "lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character"))
    for k, v in (meta.get("labels") or {}).items():
        if not isinstance(v, str) or len(v) > 63 or not _LABEL_VALUE.match(v):
            causes.append(_cause("metadata.labels", f'Invalid value: "{v}" (label {k}): a valid label must be an empty string or consist '
                                 "of alphanumeric characters, '-', '_' or '.', at most 63 characters"))
    return causes


def _job_causes(job: dict[str, Any], old: dict[str, Any] | None) -> list[dict[str, str]]:
    causes = []
    name = (job.get("metadata") or {}).get("name") or ""
    if len(name) > 63:
        causes.append(_cause("metadata.name", f'Invalid value: "{name}": must be no more than 63 characters '
                             "(the Job name is a label value on its pods)"))
    spec = job.get("spec") or {}
    for k, v in (((spec.get("template") or {}).get("metadata") or {}).get("labels") or {}).items():
        if not isinstance(v, str) or len(v) > 63 or not _LABEL_VALUE.match(v):
            causes.append(_cause("spec.template.labels", f'Invalid value: "{v}": a valid label must be an empty string or '
                                 "consist of alphanumeric characters, '-', '_' or '.', and must start and end with an "
                                 f"alphanumeric character (label {k})"))
    pod = (spec.get("template") or {}).get("spec") or {}
    restart = pod.get("restartPolicy")
    if restart not in ("Never", "OnFailure"):
        causes.append(_cause("spec.template.spec.restartPolicy", f'Unsupported value: "{restart}": supported values: "OnFailure", "Never"',
                             "FieldValueNotSupported"))
    if spec.get("podFailurePolicy") and restart != "Never":
        causes.append(_cause("spec.template.spec.restartPolicy", "Invalid value: only \"Never\" is supported when podFailurePolicy is specified"))
    if spec.get("completionMode") == "Indexed" and spec.get("completions") is None:
        causes.append(_cause("spec.completions", "Required value: when completion mode is Indexed", "FieldValueRequired"))
    for i, rule in enumerate((spec.get("podFailurePolicy") or {}).get("rules") or []):
        if bool(rule.get("onExitCodes")) == bool(rule.get("onPodConditions")):
            causes.append(_cause(f"spec.podFailurePolicy.rules[{i}]", "Invalid value: specifying one of onExitCodes and onPodConditions is required"))
        codes = rule.get("onExitCodes") or {}
        if codes.get("operator") == "In" and 0 in (codes.get("values") or []):
            causes.append(_cause(f"spec.podFailurePolicy.rules[{i}].onExitCodes.values[0]", "Invalid value: 0: must not be 0 for the In operator"))
    if old is not None:
        ospec = old.get("spec") or {}
        for field in ("completionMode", "podFailurePolicy", "backoffLimitPerIndex"):
            if spec.get(field) != ospec.get(field):
                causes.append(_cause(f"spec.{field}", "Invalid value: field is immutable"))
        if spec.get("template") != ospec.get("template") and not ospec.get("suspend"):
            causes.append(_cause("spec.template", "Invalid value: field is immutable"))
    return causes


def _pod_causes(pod: dict[str, Any], old: dict[str, Any] | None) -> list[dict[str, str]]:
    causes = []
    for i, c in enumerate((pod.get("spec") or {}).get("containers") or []):
        if not c.get("image"):
            causes.append(_cause(f"spec.containers[{i}].image", "Required value", "FieldValueRequired"))
    if old is not None:
        def mutable_less(spec: dict[str, Any]) -> dict[str, Any]:
            s = copy.deepcopy(spec or {})
            for k in ("activeDeadlineSeconds", "tolerations", "schedulingGates", "nodeName"):
                s.pop(k, None)
            for c in s.get("containers") or []:
                c.pop("image", None)
            return s
        if mutable_less(pod.get("spec")) != mutable_less(old.get("spec")):
            causes.append(_cause("spec", "Forbidden: pod updates may not change fields other than `spec.containers[*].image`, "
                                 "`spec.activeDeadlineSeconds`, `spec.tolerations` (only additions to existing tolerations)",
                                 "FieldValueForbidden"))
    return causes


def builtin(kind: str, group: str, obj: dict[str, Any], old: dict[str, Any] | None, strict: bool) -> None:
    """Raise 422 as the API server would for a built-in object (a create, or an update of ``old``)."""
    meta = obj.get("metadata") or {}
    causes = _schema_causes(kind, obj, strict) + _name_causes(kind, meta)
    if kind == "Job":
        causes += _job_causes(obj, old)
    elif kind == "Pod":
        causes += _pod_causes(obj, old)
    if causes:
        raise invalid(kind, group, meta.get("name") or meta.get("generateName") or "", causes)


# -------------------------------------------------------------- custom resources
def prune(schema: dict[str, Any], value: Any) -> Any:
    """Drop fields the structural schema does not know (the API server's pruning)."""
    if isinstance(value, dict):
        if schema.get("x-kubernetes-preserve-unknown-fields"):
            return value
        props = schema.get("properties")
        extra = schema.get("additionalProperties")
        if props is not None:
            return {k: prune(props[k], v) for k, v in value.items() if k in props}
        if isinstance(extra, dict):
            return {k: prune(extra, v) for k, v in value.items()}
        return value
    if isinstance(value, list) and isinstance(schema.get("items"), dict):
        return [prune(schema["items"], v) for v in value]
    return value


def custom_resource(new: dict[str, Any], old: dict[str, Any] | None, subresource: str | None,
                    kind: str = "FineTuneJob") -> dict[str, Any]:
    """The stored custom resource (FineTuneJob, FineTuneSweep) for a write (pruned, defaulted) or 422 with its CRD's messages."""
    from kubetune_api import validation as v

    schema = v.crd_schema(kind)
    body = dict(new)
    for part in ("spec", "status"):
        if part in body and isinstance(schema["properties"].get(part), dict):
            body[part] = prune(schema["properties"][part], body[part])
    body = v.prepare(schema, body, defaults=True)
    body["metadata"] = new.get("metadata") or {}
    problems = v.schema_problems(body, kind)
    if subresource != "status":
        problems += v.cel_problems(body, v.prepare(schema, old) if old is not None else None, schema_errors=problems, kind=kind)
    if subresource == "status":
        problems = [p for p in problems if p.path.startswith("status")]
    else:
        problems = [p for p in problems if not p.path.startswith("status")]
    if problems:
        meta = body["metadata"]
        raise invalid(kind, "kubetune.io", meta.get("name") or "",
                      [_cause(p.path, p.message) for p in problems])
    return body
