"""A small evaluator of NetworkPolicy semantics over rendered manifests, to assert which flows are allowed.

It covers what the chart uses: podSelector/namespaceSelector peers with matchLabels, numbered and
named ports, Ingress and Egress policy types. A pod that no policy selects for a direction is open
in that direction, as in Kubernetes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from tests.chart.helm import NAMESPACE, Manifest, containers, objects, pod_labels

NS_LABEL = "kubernetes.io/metadata.name"


@dataclass(frozen=True)
class Pod:
    namespace: str
    labels: dict[str, str]
    ports: dict[str, int] = field(default_factory=dict)  # container port names → numbers

    @property
    def namespace_labels(self) -> dict[str, str]:
        return {NS_LABEL: self.namespace}


def release_pod(manifests: list[Manifest], component: str, pool: str | None = None) -> Pod:
    """A pod of the release, from the workload of that component (and worker pool)."""
    for kind in ("Deployment", "StatefulSet", "Pod", "CronJob"):
        for workload in objects(manifests, kind):
            labels = pod_labels(workload)
            if labels.get("app.kubernetes.io/component") != component:
                continue
            if pool is not None and labels.get("bailu/worker-pool") != pool:
                continue
            ports = {
                p["name"]: p["containerPort"] for c in containers(workload) for p in c.get("ports", []) if "name" in p
            }
            return Pod(NAMESPACE, labels, ports)
    raise AssertionError(f"no pod of component {component} (pool {pool})")


def _selector_matches(selector: dict[str, Any] | None, labels: dict[str, str]) -> bool:
    if selector is None:
        return True
    assert not selector.get("matchExpressions"), "the evaluator handles matchLabels only"
    return all(labels.get(k) == v for k, v in (selector.get("matchLabels") or {}).items())


def _peer_matches(peer: dict[str, Any], policy_ns: str, pod: Pod) -> bool:
    if "ipBlock" in peer:
        return False  # pods are not addressed by CIDR here
    pod_sel, ns_sel = peer.get("podSelector"), peer.get("namespaceSelector")
    if ns_sel is None and pod.namespace != policy_ns:
        return False
    return _selector_matches(ns_sel, pod.namespace_labels) and _selector_matches(pod_sel, pod.labels)


def _port_matches(rule_ports: list[dict[str, Any]] | None, port: int, protocol: str, target: Pod) -> bool:
    if not rule_ports:
        return True
    for p in rule_ports:
        if p.get("protocol", "TCP") != protocol:
            continue
        wanted = p.get("port")
        if wanted is None or wanted == port or (isinstance(wanted, str) and target.ports.get(wanted) == port):
            return True
    return False


def _direction_allows(
    policies: list[Manifest], direction: str, subject: Pod, other: Pod, port: int, protocol: str, target: Pod
) -> bool:
    key, peers_key = ("ingress", "from") if direction == "Ingress" else ("egress", "to")
    selecting = [
        p
        for p in policies
        if p["metadata"]["namespace"] == subject.namespace
        and direction in p["spec"].get("policyTypes", ["Ingress"])
        and _selector_matches(p["spec"]["podSelector"], subject.labels)
    ]
    if not selecting:
        return True
    for policy in selecting:
        for rule in policy["spec"].get(key) or []:
            peers = rule.get(peers_key)
            if not _port_matches(rule.get("ports"), port, protocol, target):
                continue
            if not peers or any(_peer_matches(peer, policy["metadata"]["namespace"], other) for peer in peers):
                return True
    return False


def allowed(manifests: list[Manifest], src: Pod, dst: Pod, port: int, protocol: str = "TCP") -> bool:
    """Whether the rendered NetworkPolicies let `src` open a connection to `dst` on `port`."""
    policies = objects(manifests, "NetworkPolicy")
    egress = _direction_allows(policies, "Egress", src, dst, port, protocol, dst)
    ingress = _direction_allows(policies, "Ingress", dst, src, port, protocol, dst)
    return egress and ingress
