"""Writes deploy/kubernetes/workers.yaml: one Deployment and one KEDA ScaledObject per vendor queue.

Seven near-identical blocks are generated rather than hand-kept, so the vendor list (bus.vendors),
the queue names (bus.keys) and the stop timing have one home each; tests/test_fleet_deploy.py fails
when the committed file differs from what this prints. Run from the checkout root:

    .venv/bin/python deploy/kubernetes/generate.py > deploy/kubernetes/workers.yaml
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import yaml

from bus.keys import queue, rq_queue
from bus.vendors import TYPES

IMAGE = "ghcr.io/example/ifbus-sip:0.1.0"  # replace with the image you built (deploy/container)
METRICS_PORT = 9108
CONCURRENCY = 4  # processes per pod; KEDA adds pods
# Longer than the longest call: the default request timeout (90 s) + RQ's job slack (30 s) + margin,
# the same as TimeoutStopSec in deploy/systemd/ifbus-worker@.service.
GRACE_SECONDS = 180
LABELS = {"app.kubernetes.io/name": "ifbus-sip", "app.kubernetes.io/part-of": "ifbus"}


def container(name: str, args: list[str]) -> dict[str, Any]:
    return {
        "name": name,
        "image": IMAGE,
        "args": args,
        "envFrom": [{"configMapRef": {"name": "ifbus-config"}}],
        "env": [
            {"name": "IFBUS_REDIS_URL", "valueFrom": {"secretKeyRef": {"name": "ifbus-redis", "key": "redis-url"}}},
            {"name": "IFBUS_REGISTRY_KEY",
             "valueFrom": {"secretKeyRef": {"name": "ifbus-redis", "key": "registry-key"}}},
        ],
        "resources": {"requests": {"cpu": "50m", "memory": "256Mi"}, "limits": {"memory": "512Mi"}},
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": 10001,
            "runAsGroup": 10001,
            "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": True,
            "capabilities": {"drop": ["ALL"]},
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "volumeMounts": [{"name": "tmp", "mountPath": "/tmp"}, {"name": "home", "mountPath": "/var/lib/ifbus"}],
    }  # fmt: skip


def deployment(name: str, component: str, args: list[str], metrics: bool) -> dict[str, Any]:
    labels = {**LABELS, "app.kubernetes.io/component": component}
    main = container("ifbus", args)
    annotations = {}
    if metrics:
        main["ports"] = [{"name": "metrics", "containerPort": METRICS_PORT}]
        main["livenessProbe"] = {"httpGet": {"path": "/metrics", "port": "metrics"}, "periodSeconds": 30,
                                 "timeoutSeconds": 5, "failureThreshold": 4}  # fmt: skip
        annotations = {"prometheus.io/scrape": "true", "prometheus.io/port": str(METRICS_PORT)}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "labels": dict(labels)},
        "spec": {
            "replicas": 1,  # KEDA owns the count from here on (ScaledObject below)
            "selector": {"matchLabels": dict(labels)},
            "template": {
                "metadata": {"labels": dict(labels), "annotations": annotations},
                "spec": {
                    "terminationGracePeriodSeconds": GRACE_SECONDS,
                    "automountServiceAccountToken": False,
                    "containers": [main],
                    "volumes": [{"name": "tmp", "emptyDir": {}}, {"name": "home", "emptyDir": {}}],
                },
            },
        },
    }


def scaled_object(type_: str) -> dict[str, Any]:
    name = f"ifbus-worker-{type_}"
    return {
        "apiVersion": "keda.sh/v1alpha1",
        "kind": "ScaledObject",
        "metadata": {"name": name, "labels": {**LABELS, "app.kubernetes.io/component": f"worker-{type_}"}},
        "spec": {
            "scaleTargetRef": {"name": name},
            # Never 0: a producer refuses to queue for a type no live worker serves (it answers at once
            # instead of waiting out its timeout), so with no pod the queue would never grow to wake KEDA.
            "minReplicaCount": 1,
            "maxReplicaCount": 10,
            "pollingInterval": 10,
            "cooldownPeriod": 300,
            "triggers": [
                {
                    "type": "redis",
                    "metadata": {
                        "listName": rq_queue(type_),
                        # jobs waiting per pod before another pod is added: each pod runs CONCURRENCY calls
                        "listLength": str(CONCURRENCY),
                        "activationListLength": "0",
                        "databaseIndex": "0",
                    },
                    "authenticationRef": {"name": "ifbus-redis"},
                }
            ],
        },
    }


def documents() -> list[dict[str, Any]]:
    docs: list[dict[str, Any]] = []
    for type_ in TYPES:
        args = ["worker", type_, "--concurrency", str(CONCURRENCY), "--metrics-port", str(METRICS_PORT)]
        docs.append(deployment(f"ifbus-worker-{type_}", f"worker-{type_}", args, metrics=True))
        docs.append(scaled_object(type_))
    docs.append(deployment("ifbus-ingress", "ingress", ["ingress"], metrics=False))
    return docs


def render() -> str:
    header = (
        "# Generated by deploy/kubernetes/generate.py: edit that, then regenerate (docs/operations.md).\n"
        f"# One Deployment + KEDA ScaledObject per vendor queue ({', '.join(queue(t) for t in TYPES)}),\n"
        "# and the ingress. Needs config.yaml (ConfigMap, Secret, TriggerAuthentication) applied first.\n"
    )
    return header + yaml.safe_dump_all(documents(), sort_keys=False, width=120, explicit_start=True)


if __name__ == "__main__":
    sys.stdout.write(render())
