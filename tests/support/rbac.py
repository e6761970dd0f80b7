"""RBAC authorization as the API server does it, from the Role/ClusterRole/(Cluster)RoleBinding objects
stored in the emulator (https://kubernetes.io/docs/reference/access-authn-authz/rbac/).

A request is allowed when some binding whose subjects include the user (or one
of its groups) refers to a role with a rule matching the request's verb, API
group, resource (``plural`` or ``plural/subresource``) and, where the rule
lists ``resourceNames``, the object's name. RoleBindings grant only in their
namespace; ClusterRoleBindings everywhere. The group ``system:masters`` may do
anything. Rules are additive; there are no deny rules.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from support.emulator import ApiCall, Identity, KubeEmulator

RBAC = "rbac.authorization.k8s.io/v1"


def _subject_matches(subject: dict[str, Any], who: Identity, binding_ns: str | None) -> bool:
    kind, name = subject.get("kind"), subject.get("name")
    if kind == "User":
        return name == who.user
    if kind == "Group":
        return name in who.groups
    if kind == "ServiceAccount":
        ns = subject.get("namespace") or binding_ns
        return who.user == f"system:serviceaccount:{ns}:{name}"
    return False


def rule_allows(rule: dict[str, Any], call: ApiCall) -> bool:
    if call.verb not in (rule.get("verbs") or []) and "*" not in (rule.get("verbs") or []):
        return False
    if call.group not in (rule.get("apiGroups") or []) and "*" not in (rule.get("apiGroups") or []):
        return False
    resource = f"{call.resource}/{call.subresource}" if call.subresource else call.resource
    resources = rule.get("resources") or []
    if not (resource in resources or "*" in resources
            or (call.subresource and f"*/{call.subresource}" in resources)
):
        return False
    names = rule.get("resourceNames") or []
    if names:
        # resourceNames cannot restrict create, list or watch without a name (RBAC docs).
        if call.verb == "create" and not call.subresource:
            return False
        if call.name not in names:
            return False
    return True


def authorize(emu: KubeEmulator, who: Identity, call: ApiCall) -> bool:
    if "system:masters" in who.groups:
        return True
    bindings: list[tuple[dict[str, Any], str | None]] = [(b, None) for b in emu.live_objects(f"{RBAC}/clusterrolebindings")]
    if call.namespace:
        bindings += [(b, call.namespace) for b in emu.live_objects(f"{RBAC}/rolebindings", call.namespace)]
    for binding, ns in bindings:
        if not any(_subject_matches(s, who, ns) for s in binding.get("subjects") or []):
            continue
        ref = binding.get("roleRef") or {}
        if ref.get("kind") == "ClusterRole":
            roles = [r for r in emu.live_objects(f"{RBAC}/clusterroles") if r["metadata"]["name"] == ref.get("name")]
        else:
            roles = [r for r in emu.live_objects(f"{RBAC}/roles", ns) if r["metadata"]["name"] == ref.get("name")]
        for role in roles:
            if any(rule_allows(rule, call) for rule in role.get("rules") or []):
                return True
    return False


def forbidden_message(who: Identity, call: ApiCall) -> str:
    """The API server's wording, e.g. 'finetunejobs.kubetune.io "x" is forbidden: User "..." cannot patch
    resource "finetunejobs/status" in API group "kubetune.io" in the namespace "ml"'."""
    resource = f"{call.resource}/{call.subresource}" if call.subresource else call.resource
    what = f"{call.resource}.{call.group}" if call.group else call.resource
    subject = f'{what} "{call.name}"' if call.name and call.verb != "create" else what
    where = f' in the namespace "{call.namespace}"' if call.namespace else " at the cluster scope"
    return (f'{subject} is forbidden: User "{who.user}" cannot {call.verb} resource "{resource}" '
            f'in API group "{call.group}"{where}')
