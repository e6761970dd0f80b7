"""Which pod may open a connection to which, under the NetworkPolicies stored in a cluster.

Ingress semantics as https://kubernetes.io/docs/concepts/services-networking/network-policies/
states them: a pod is isolated for ingress once any policy of its namespace
with ``Ingress`` in ``policyTypes`` selects it; an isolated pod accepts a
connection only if some such policy has an ingress rule whose peers admit the
source (no ``from``: every source; a ``podSelector`` peer alone: pods of the
policy's namespace; with ``namespaceSelector``: pods of the selected
namespaces) and whose ports (none listed: all) include the port. Policies add
up. ``ipBlock`` peers are not modelled (they never match a pod here).
"""
from __future__ import annotations

from collections.abc import Iterable
from typing import Any


def selects(selector: dict[str, Any] | None, labels: dict[str, str]) -> bool:
    """A metav1.LabelSelector (matchLabels, matchExpressions) against labels; {} selects everything."""
    selector = selector or {}
    if any(labels.get(k) != v for k, v in (selector.get("matchLabels") or {}).items()):
        return False
    for e in selector.get("matchExpressions") or []:
        key, op, values = e["key"], e["operator"], e.get("values") or []
        ok = {"Exists": key in labels, "DoesNotExist": key not in labels,
              "In": key in labels and labels[key] in values, "NotIn": key not in labels or labels[key] not in values}[op]
        if not ok:
            return False
    return True


def _labels(obj: dict[str, Any]) -> dict[str, str]:
    return dict((obj.get("metadata") or {}).get("labels") or {})


def _namespace(obj: dict[str, Any]) -> str:
    return str((obj.get("metadata") or {}).get("namespace") or "default")


def _peer_admits(peer: dict[str, Any], policy_ns: str, source: dict[str, Any],
                 namespace_labels: dict[str, dict[str, str]]) -> bool:
    if "ipBlock" in peer:
        return False
    if "namespaceSelector" in peer:
        ns_labels = namespace_labels.get(_namespace(source), {"kubernetes.io/metadata.name": _namespace(source)})
        if not selects(peer["namespaceSelector"], ns_labels):
            return False
    elif _namespace(source) != policy_ns:
        return False
    return "podSelector" not in peer or selects(peer["podSelector"], _labels(source))


def _port_matches(rule: dict[str, Any], port: int) -> bool:
    ports = rule.get("ports")
    if not ports:
        return True
    for p in ports:
        if "port" not in p:
            return True
        first = p["port"]
        if isinstance(first, int) and first <= port <= int(p.get("endPort") or first):
            return True
    return False


def ingress_allowed(policies: Iterable[dict[str, Any]], source: dict[str, Any], target: dict[str, Any], port: int,
                    namespace_labels: dict[str, dict[str, str]] | None = None) -> bool:
    """May ``source`` (a Pod) connect to ``target`` (a Pod) on TCP ``port``?"""
    namespace_labels = namespace_labels or {}
    applying = [p for p in policies
                if _namespace(p) == _namespace(target)
                and "Ingress" in ((p.get("spec") or {}).get("policyTypes") or ["Ingress"])
                and selects((p.get("spec") or {}).get("podSelector"), _labels(target))]
    if not applying:
        return True  # not isolated
    for policy in applying:
        for rule in policy["spec"].get("ingress") or []:
            peers = rule.get("from")
            if not _port_matches(rule, port):
                continue
            if not peers or any(_peer_admits(peer, _namespace(policy), source, namespace_labels) for peer in peers):
                return True
    return False
