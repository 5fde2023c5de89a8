"""deploy/ checked as an operator's tools would: the Procfile's lines, the systemd unit through
`systemd-analyze verify` and `security`, the container recipe, and the Kubernetes manifests through
kubernetes-validate (core kinds, strict) and KEDA's documented fields (ScaledObject, TriggerAuthentication,
https://keda.sh/docs/2.16/reference/scaledobject-spec/ and …/scalers/redis-lists/).

Running the Procfile and the metrics for real: tests/integration/test_fleet_lab.py."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from bus.keys import rq_queue
from bus.vendors import TYPES

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
UNIT = DEPLOY / "systemd" / "ifbus-worker@.service"
K8S_VERSION = "1.30.0"

# KEDA's documented fields (v2.x): only what these manifests use is required; unknown fields are refused.
_STR = {"type": "string"}
_COUNT = {"type": "string", "pattern": "^[0-9]+$"}
SCALED_OBJECT = {
    "type": "object",
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "properties": {
        "apiVersion": {"const": "keda.sh/v1alpha1"},
        "kind": {"const": "ScaledObject"},
        "metadata": {"type": "object", "required": ["name"]},
        "spec": {
            "type": "object",
            "required": ["scaleTargetRef", "triggers"],
            "additionalProperties": False,
            "properties": {
                "scaleTargetRef": {"type": "object", "required": ["name"], "additionalProperties": False,
                                   "properties": {"name": _STR, "kind": _STR, "apiVersion": _STR,
                                                  "envSourceContainerName": _STR}},
                "pollingInterval": {"type": "integer", "minimum": 1},
                "cooldownPeriod": {"type": "integer", "minimum": 0},
                "initialCooldownPeriod": {"type": "integer", "minimum": 0},
                "idleReplicaCount": {"type": "integer", "minimum": 0},
                "minReplicaCount": {"type": "integer", "minimum": 0},
                "maxReplicaCount": {"type": "integer", "minimum": 1},
                "fallback": {"type": "object"},
                "advanced": {"type": "object"},
                "triggers": {
                    "type": "array",
                    "minItems": 1,
                    "items": {
                        "type": "object",
                        "required": ["type", "metadata"],
                        "additionalProperties": False,
                        "properties": {
                            "type": {"enum": ["redis", "redis-sentinel", "redis-cluster"]},
                            "name": _STR,
                            "useCachedMetrics": {"type": "boolean"},
                            "metricType": {"enum": ["AverageValue", "Value", "Utilization"]},
                            # every metadata value is a string in KEDA (a YAML number is rejected)
                            "metadata": {
                                "type": "object",
                                "required": ["listName"],
                                "additionalProperties": _STR,
                                "properties": {"listName": _STR, "listLength": _COUNT,
                                               "activationListLength": _COUNT, "databaseIndex": _COUNT},
                            },
                            "authenticationRef": {"type": "object", "required": ["name"],
                                                  "properties": {"name": _STR, "kind": _STR}},
                        },
                    },
                },
            },
        },
    },
}  # fmt: skip
TRIGGER_AUTH = {
    "type": "object",
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "properties": {
        "apiVersion": {"const": "keda.sh/v1alpha1"},
        "kind": {"const": "TriggerAuthentication"},
        "spec": {"type": "object", "required": ["secretTargetRef"], "properties": {"secretTargetRef": {
            "type": "array", "items": {"type": "object", "required": ["parameter", "name", "key"],
                                       "additionalProperties": False,
                                       "properties": {"parameter": {"enum": ["address", "host", "port", "username",
                                                                             "password", "sentinelPassword", "tls",
                                                                             "ca", "cert", "key"]},
                                                      "name": _STR, "key": _STR}}}}},
    },
}  # fmt: skip


def manifests() -> list[dict[str, Any]]:
    docs = []
    for name in ("config.yaml", "workers.yaml"):
        docs += [d for d in yaml.safe_load_all((DEPLOY / "kubernetes" / name).read_text()) if d]
    return docs


def test_procfile_runs_every_queue_and_the_ingress_without_path() -> None:
    lines = [line for line in (ROOT / "Procfile").read_text().splitlines() if line and not line.startswith("#")]
    entries = dict(line.split(": ", 1) for line in lines)
    assert entries == {**{t: f".venv/bin/ifbus worker {t}" for t in TYPES}, "ingress": ".venv/bin/ifbus ingress"}
    assert (ROOT / ".venv" / "bin" / "ifbus").exists()  # what deploy/install.sh makes in the checkout


def unit_options() -> dict[str, list[str]]:
    options: dict[str, list[str]] = {}
    for line in UNIT.read_text().splitlines():
        if "=" in line and not line.startswith("#"):
            key, value = line.split("=", 1)
            options.setdefault(key, []).append(value)
    return options


def test_systemd_unit_has_the_hardening_and_stop_timing() -> None:
    options = unit_options()
    for key, value in {"Restart": "on-failure", "KillSignal": "SIGTERM", "NoNewPrivileges": "yes",
                       "ProtectSystem": "strict", "DynamicUser": "yes", "KillMode": "mixed"}.items():  # fmt: skip
        assert options[key] == [value], key
    assert options["ExecStart"][0].endswith("ifbus worker %i --concurrency 4")
    assert {v.split(":")[0] for v in options["LoadCredential"]} == {"redis-url", "registry-key"}
    assert "IFBUS_REDIS_URL=@%d/redis-url" in options["Environment"]
    assert int(options["TimeoutStopSec"][0]) == _grace_seconds()  # one stop budget for systemd and Kubernetes


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze not installed")
def test_systemd_analyze_accepts_the_unit_and_rates_it_safe(tmp_path: Path) -> None:
    unit = tmp_path / "ifbus-worker@kamailio.service"  # verify needs an instance and an executable that exists
    unit.write_text(UNIT.read_text().replace("/opt/ifbus/.venv/bin/ifbus", str(Path(sys.executable).parent / "ifbus")))
    verify = subprocess.run(["systemd-analyze", "verify", "--man=no", str(unit)], capture_output=True, text=True)
    assert verify.returncode == 0, verify.stderr
    security = subprocess.run(["systemd-analyze", "security", "--offline=yes", str(unit)], capture_output=True,
                              text=True)  # fmt: skip
    level = re.search(r"Overall exposure level for \S+: ([0-9.]+)", security.stdout)
    assert level and float(level[1]) <= 2.0, security.stdout[-500:]  # systemd calls ≤ 2 "OK"; 1.8 when written


def test_containerfile_is_slim_non_root_and_installs_the_checkout() -> None:
    text = (DEPLOY / "container" / "Containerfile").read_text()
    froms = re.findall(r"^FROM (\S+)", text, re.M)
    assert froms and all(re.fullmatch(r"docker\.io/library/python:3\.1[1-9]-slim", f) for f in froms)
    assert re.search(r"^USER 10001:10001$", text, re.M) and not re.search(r"^ADD ", text, re.M)
    assert "pip install --no-cache-dir --disable-pip-version-check ." in text
    assert re.search(r'^ENTRYPOINT \["ifbus"\]$', text, re.M) and "STOPSIGNAL SIGTERM" in text
    for package in ("bus", "producer", "workers"):
        assert f"COPY {package} ./{package}" in text
    ignore = (DEPLOY / "container" / "Containerfile.dockerignore").read_text()
    assert ignore.splitlines()[1] == "*" and "!bus/**" in ignore


def test_core_kinds_pass_kubernetes_validate_strictly() -> None:
    core = [d for d in manifests() if not d["apiVersion"].startswith("keda.sh/")]
    assert {d["kind"] for d in core} == {"ConfigMap", "Secret", "Deployment"}
    for doc in core:
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


def test_keda_objects_have_the_documented_fields_and_one_scaler_per_queue() -> None:
    docs = manifests()
    deployments = {d["metadata"]["name"]: d for d in docs if d["kind"] == "Deployment"}
    scaled = [d for d in docs if d["kind"] == "ScaledObject"]
    auth = [d for d in docs if d["kind"] == "TriggerAuthentication"]
    assert len(auth) == 1
    jsonschema.validate(auth[0], TRIGGER_AUTH)
    lists = sorted(d["spec"]["triggers"][0]["metadata"]["listName"] for d in scaled)
    assert lists == sorted(rq_queue(t) for t in TYPES)
    for obj in scaled:
        jsonschema.validate(obj, SCALED_OBJECT)
        target = deployments[obj["spec"]["scaleTargetRef"]["name"]]
        args = target["spec"]["template"]["spec"]["containers"][0]["args"]
        trigger = obj["spec"]["triggers"][0]
        assert trigger["metadata"]["listName"] == rq_queue(args[1])  # scales the Deployment that serves that queue
        assert trigger["authenticationRef"]["name"] == auth[0]["metadata"]["name"]
        assert obj["spec"]["minReplicaCount"] >= 1  # see generate.py: producers refuse a queue nobody serves
        assert obj["spec"]["maxReplicaCount"] >= obj["spec"]["minReplicaCount"]
        pod = target["spec"]["template"]["spec"]
        assert pod["terminationGracePeriodSeconds"] == _grace_seconds()
        assert pod["containers"][0]["securityContext"]["runAsNonRoot"] is True


def test_the_committed_manifests_are_what_the_generator_writes() -> None:
    out = subprocess.run([sys.executable, str(DEPLOY / "kubernetes" / "generate.py")], capture_output=True, text=True,
                         check=True)  # fmt: skip
    assert out.stdout == (DEPLOY / "kubernetes" / "workers.yaml").read_text(), "run deploy/kubernetes/generate.py"


def _grace_seconds() -> int:
    sys.path.insert(0, str(DEPLOY / "kubernetes"))
    try:
        import generate

        return generate.GRACE_SECONDS
    finally:
        sys.path.pop(0)
