"""Assertions on the rendered manifests, component by component (what an operator relies on)."""

from __future__ import annotations

import base64
import hashlib
import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from bailu.gateway.auth import KeyStore
from tests.chart.conftest import Render
from tests.chart.helm import (
    CHART,
    NAMESPACE,
    RELEASE,
    WORKLOADS,
    Helm,
    Manifest,
    containers,
    env_names,
    env_values,
    mounts,
    objects,
    one,
    pod_labels,
    pod_spec,
    volumes,
)
from tests.chart.kube import claimed_versions, validation_error

KUBE_VERSIONS = claimed_versions()

# The release is named "bailu", which contains the chart's name: objects are prefixed "bailu-".
PREFIX = RELEASE
LABELS = {
    "helm.sh/chart",
    "app.kubernetes.io/name",
    "app.kubernetes.io/instance",
    "app.kubernetes.io/version",
    "app.kubernetes.io/managed-by",
    "app.kubernetes.io/component",
    "app.kubernetes.io/part-of",
}
COMPONENTS = {"gateway", "worker", "collector", "trainer", "redis", "storage", "network", "test"}
RENDERED = [
    "default_manifests",
    "demo_manifests",
    "gpu_manifests",
    "full_manifests",
    "existing_manifests",
    "engine_manifests",
]


@pytest.fixture(params=RENDERED)
def manifests(request: pytest.FixtureRequest) -> list[Manifest]:
    return list(request.getfixturevalue(request.param))


def selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


def workload_pods(manifests: list[Manifest]) -> list[Manifest]:
    return [m for m in manifests if m["kind"] in WORKLOADS]


def container(workload: Manifest, name: str) -> dict[str, Any]:
    return next(c for c in containers(workload) if c["name"] == name)


def secret_data(secret: Manifest) -> dict[str, str]:
    return {k: base64.b64decode(v).decode() for k, v in secret["data"].items()}


def starts_runs(collector: Manifest) -> bool:
    return env_values(container(collector, "collector"))["BAILU_COLLECTOR_RUNNER"] == "kubernetes"


def starts_runs_in(manifests: list[Manifest]) -> bool:
    return starts_runs(one(manifests, "Deployment", f"{PREFIX}-collector"))


def component_objects(manifests: list[Manifest], component: str) -> list[Manifest]:
    return [m for m in manifests if m["metadata"]["labels"]["app.kubernetes.io/component"] == component]


# --- every object ---------------------------------------------------------------------------------


def test_every_object_has_the_standard_labels(manifests: list[Manifest]) -> None:
    for m in manifests:
        labels = m["metadata"]["labels"]
        assert set(labels) >= LABELS, f"{m['kind']}/{m['metadata']['name']} lacks {LABELS - set(labels)}"
        assert labels["app.kubernetes.io/component"] in COMPONENTS
        assert labels["app.kubernetes.io/part-of"] == "bailu"
        assert labels["app.kubernetes.io/instance"] == RELEASE
        assert m["metadata"]["namespace"] == NAMESPACE
    for workload in workload_pods(manifests):
        assert set(pod_labels(workload)) >= LABELS
        if workload["kind"] == "CronJob":  # a Job's selector is generated; its own labels come from the template
            assert set(workload["spec"]["jobTemplate"]["metadata"]["labels"]) >= LABELS
        elif workload["kind"] != "Pod":
            assert selects(workload["spec"]["selector"]["matchLabels"], pod_labels(workload))


def test_services_and_budgets_select_their_pods(manifests: list[Manifest]) -> None:
    pods = {w["metadata"]["name"]: pod_labels(w) for w in workload_pods(manifests)}
    for service in objects(manifests, "Service"):
        component = service["metadata"]["labels"]["app.kubernetes.io/component"]
        selected = [n for n, labels in pods.items() if selects(service["spec"]["selector"], labels)]
        assert selected, f"Service {service['metadata']['name']} selects no pod"
        assert all(pods[n]["app.kubernetes.io/component"] == component for n in selected)
    for pdb in objects(manifests, "PodDisruptionBudget"):
        selected = [n for n, labels in pods.items() if selects(pdb["spec"]["selector"]["matchLabels"], labels)]
        assert selected == [pdb["metadata"]["name"]], f"PDB {pdb['metadata']['name']} selects {selected}"


def test_pods_run_locked_down(manifests: list[Manifest]) -> None:
    for workload in workload_pods(manifests):
        name, spec = workload["metadata"]["name"], pod_spec(workload)
        pod_sc = spec["securityContext"]
        assert pod_sc["runAsNonRoot"] is True, name
        assert isinstance(pod_sc["runAsUser"], int), name
        assert pod_sc["runAsUser"] > 0, name
        assert pod_sc["seccompProfile"] == {"type": "RuntimeDefault"}, name
        # Only a collector that starts training runs gets an API token (test_collector_rbac).
        token = pod_labels(workload)["app.kubernetes.io/component"] == "collector" and starts_runs(workload)
        assert spec["automountServiceAccountToken"] is token, name
        assert spec["enableServiceLinks"] is False, name
        for c in containers(workload):
            sc = c["securityContext"]
            assert sc["runAsNonRoot"] is True, f"{name}/{c['name']}"
            assert sc["allowPrivilegeEscalation"] is False, f"{name}/{c['name']}"
            assert sc["readOnlyRootFilesystem"] is True, f"{name}/{c['name']}"
            assert sc["capabilities"] == {"drop": ["ALL"]}, f"{name}/{c['name']}"
            assert sc["seccompProfile"] == {"type": "RuntimeDefault"}, f"{name}/{c['name']}"
            # The root filesystem is read-only: /tmp is the writable scratch space.
            assert mounts(c)["/tmp"]["name"] == "tmp"
            assert "emptyDir" in volumes(workload)["tmp"]
            assert c.get("resources"), f"{name}/{c['name']} has no resources"
    for account in objects(manifests, "ServiceAccount"):
        assert account["automountServiceAccountToken"] is False


def test_python_containers_keep_caches_in_tmp(default_manifests: list[Manifest]) -> None:
    for workload in workload_pods(default_manifests):
        for c in containers(workload):
            if c["name"] in {"gateway", "worker", "collector", "trainer", "test"}:
                env = env_values(c)
                assert env["HOME"] == "/tmp"
                assert env["HF_HOME"].startswith("/tmp/")
                assert env["HF_HUB_OFFLINE"] == "1"


# --- gateway --------------------------------------------------------------------------------------


def test_gateway_deployment(default_manifests: list[Manifest]) -> None:
    gateway = one(default_manifests, "Deployment", f"{PREFIX}-gateway")
    assert gateway["spec"]["replicas"] == 2
    c = container(gateway, "gateway")
    env = env_values(c)
    assert c["ports"] == [{"name": "http", "containerPort": 8000, "protocol": "TCP"}]
    assert env["BAILU_GATEWAY_PORT"] == "8000"
    assert c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert c["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    assert c["resources"]["requests"]["cpu"]
    assert c["resources"]["limits"]["memory"]
    assert c["image"] == "bailu/gateway:0.1.0"
    # The workers' headless Service, by its full DNS name, on the gRPC port.
    service = one(default_manifests, "Service", f"{PREFIX}-worker")
    assert service["spec"]["clusterIP"] == "None"
    grpc = next(p for p in service["spec"]["ports"] if p["name"] == "grpc")
    assert env["BAILU_GATEWAY_WORKERS_DNS"] == f"{PREFIX}-worker.{NAMESPACE}.svc.cluster.local:{grpc['port']}"
    assert grpc["port"] == 50051
    gateway_service = one(default_manifests, "Service", f"{PREFIX}-gateway")
    assert gateway_service["spec"]["ports"][0]["targetPort"] == "http"
    pdb = one(default_manifests, "PodDisruptionBudget", f"{PREFIX}-gateway")
    assert pdb["spec"]["maxUnavailable"] == 1
    assert not objects(default_manifests, "HorizontalPodAutoscaler")
    assert not objects(default_manifests, "Ingress")
    assert not objects(default_manifests, "HTTPRoute")


def test_generated_api_key_secret_and_keys_file(default_manifests: list[Manifest]) -> None:
    secret = one(default_manifests, "Secret", f"{PREFIX}-api-keys")
    data = secret_data(secret)
    key = data["api-key"]
    assert key.startswith("bailu-")
    assert len(key) >= 40
    hashes = [line.split()[0] for line in data["api-keys"].splitlines() if line and not line.startswith("#")]
    assert hashes == ["sha256:" + hashlib.sha256(key.encode()).hexdigest()]
    # The gateway's own parser accepts the file and the plain key verifies against it.
    assert KeyStore([line for line in data["api-keys"].splitlines() if not line.startswith("#")]).verify(
        f"Bearer {key}"
    )
    # The keys file is mounted where BAILU_GATEWAY_API_KEYS_FILE says, and the plain key is not mounted.
    gateway = one(default_manifests, "Deployment", f"{PREFIX}-gateway")
    c = container(gateway, "gateway")
    path = Path(env_values(c)["BAILU_GATEWAY_API_KEYS_FILE"])
    mount = mounts(c)[str(path.parent)]
    assert mount["readOnly"] is True
    volume = volumes(gateway)[mount["name"]]["secret"]
    assert volume["secretName"] == secret["metadata"]["name"]
    assert volume["items"] == [{"key": "api-keys", "path": path.name}]


def test_extra_key_hashes_join_the_keys_file(full_manifests: list[Manifest]) -> None:
    data = secret_data(one(full_manifests, "Secret", f"{PREFIX}-api-keys"))
    assert "sha256:" + "ab" * 32 in data["api-keys"].splitlines()


def test_existing_api_keys_secret(existing_manifests: list[Manifest]) -> None:
    assert not [s for s in objects(existing_manifests, "Secret") if s["metadata"]["name"].endswith("api-keys")]
    gateway = one(existing_manifests, "Deployment", f"{PREFIX}-gateway")
    c = container(gateway, "gateway")
    assert env_values(c)["BAILU_GATEWAY_API_KEYS_FILE"] == "/etc/bailu/api-keys/hashes"
    assert volumes(gateway)["api-keys"]["secret"]["secretName"] == "my-keys"
    assert volumes(gateway)["api-keys"]["secret"]["items"] == [{"key": "hashes", "path": "hashes"}]


def test_gateway_autoscaling_ingress_and_route(full_manifests: list[Manifest]) -> None:
    gateway = one(full_manifests, "Deployment", f"{PREFIX}-gateway")
    assert "replicas" not in gateway["spec"], "the HPA owns the replica count"
    hpa = one(full_manifests, "HorizontalPodAutoscaler", f"{PREFIX}-gateway")
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": f"{PREFIX}-gateway"}
    assert hpa["spec"]["metrics"][0]["resource"] == {
        "name": "cpu",
        "target": {"type": "Utilization", "averageUtilization": 60},
    }
    assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (2, 5)
    ingress = one(full_manifests, "Ingress", f"{PREFIX}-gateway")
    assert ingress["spec"]["ingressClassName"] == "nginx"
    backend = ingress["spec"]["rules"][0]["http"]["paths"][0]["backend"]["service"]
    assert backend == {"name": f"{PREFIX}-gateway", "port": {"name": "http"}}
    route = one(full_manifests, "HTTPRoute", f"{PREFIX}-gateway")
    assert route["apiVersion"] == "gateway.networking.k8s.io/v1"
    assert route["spec"]["parentRefs"] == [{"name": "public", "namespace": "gateway-system"}]
    assert route["spec"]["hostnames"] == ["bailu.example.com"]
    assert route["spec"]["rules"][0]["backendRefs"] == [{"name": f"{PREFIX}-gateway", "port": 8000}]
    assert route["spec"]["rules"][0]["matches"] == [{"path": {"type": "PathPrefix", "value": "/"}}]
    spread = pod_spec(gateway)["topologySpreadConstraints"][0]
    assert spread["labelSelector"]["matchLabels"]["app.kubernetes.io/component"] == "gateway"
    assert pod_spec(gateway)["priorityClassName"] == "bailu-high"
    assert pod_spec(gateway)["imagePullSecrets"] == [{"name": "regcred"}]
    assert container(gateway, "gateway")["image"] == "registry.example.com/bailu/bailu/gateway:0.1.0"


def test_settings_render_as_the_service_reads_them(full_manifests: list[Manifest]) -> None:
    env = env_values(container(one(full_manifests, "Deployment", f"{PREFIX}-gateway"), "gateway"))
    assert env["BAILU_GATEWAY_MAX_BODY_BYTES"] == "2097152"  # not 2.097152e+06
    assert env["BAILU_GATEWAY_REQUEST_TIMEOUT_S"] == "90.5"
    assert env["BAILU_GATEWAY_LOG_LEVEL"] == "DEBUG"
    assert env["BAILU_GATEWAY_HOST"] == "::"


# --- Redis ----------------------------------------------------------------------------------------


def test_redis_statefulset_persists_with_aof(default_manifests: list[Manifest]) -> None:
    redis = one(default_manifests, "StatefulSet", f"{PREFIX}-redis")
    c = container(redis, "redis")
    args = c["args"]
    assert args[args.index("--appendonly") + 1] == "yes"
    assert args[args.index("--maxmemory-policy") + 1] == "noeviction"
    assert args[args.index("--requirepass") + 1] == "$(REDIS_PASSWORD)"
    assert mounts(c)["/data"]["name"] == "data"
    claim = redis["spec"]["volumeClaimTemplates"][0]
    assert claim["metadata"]["name"] == "data"
    assert claim["spec"]["accessModes"] == ["ReadWriteOnce"]
    assert redis["spec"]["serviceName"] == f"{PREFIX}-redis"
    password = next(e for e in c["env"] if e["name"] == "REDIS_PASSWORD")["valueFrom"]["secretKeyRef"]
    assert password == {"name": f"{PREFIX}-redis", "key": "redis-password"}
    assert len(secret_data(one(default_manifests, "Secret", f"{PREFIX}-redis"))["redis-password"]) == 32
    assert c["readinessProbe"]["exec"]["command"][-1].endswith("grep -q PONG")
    service = one(default_manifests, "Service", f"{PREFIX}-redis")
    assert service["spec"]["ports"][0]["port"] == 6379


def test_gateway_reaches_redis_with_the_password(default_manifests: list[Manifest]) -> None:
    c = container(one(default_manifests, "Deployment", f"{PREFIX}-gateway"), "gateway")
    names = env_names(c)
    url = env_values(c)["BAILU_GATEWAY_REDIS_URL"]
    assert url == f"redis://:$(REDIS_PASSWORD)@{PREFIX}-redis.{NAMESPACE}.svc.cluster.local:6379/0"
    # Kubernetes expands $(REDIS_PASSWORD) only from variables defined before.
    assert names.index("REDIS_PASSWORD") < names.index("BAILU_GATEWAY_REDIS_URL")


def test_external_redis(existing_manifests: list[Manifest]) -> None:
    assert not objects(existing_manifests, "StatefulSet")
    assert not [s for s in objects(existing_manifests, "Service") if s["metadata"]["name"].endswith("redis")]
    c = container(one(existing_manifests, "Deployment", f"{PREFIX}-gateway"), "gateway")
    assert env_values(c)["BAILU_GATEWAY_REDIS_URL"] == "rediss://:$(REDIS_PASSWORD)@redis.example.com:6380/0"
    ref = next(e for e in c["env"] if e["name"] == "REDIS_PASSWORD")["valueFrom"]["secretKeyRef"]
    assert ref == {"name": "redis-pw", "key": "redis-password"}


# --- workers --------------------------------------------------------------------------------------


def test_default_worker_pool(default_manifests: list[Manifest]) -> None:
    worker = one(default_manifests, "Deployment", f"{PREFIX}-worker-cpu")
    c = container(worker, "worker")
    env = env_values(c)
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert ports == {"grpc": 50051, "http-metrics": 9091}
    assert (env["BAILU_WORKER_PORT"], env["BAILU_WORKER_HTTP_PORT"]) == ("50051", "9091")
    assert env["BAILU_WORKER_ENGINE"] == "transformers"
    assert env["BAILU_WORKER_MODEL_PATH"] == "/opt/bailu/models/smollm2-135m-instruct"
    assert c["image"] == "bailu/worker-cpu:0.1.0"
    # Probes on the probe server's port: startup sized for slow loads, then readiness and liveness.
    startup = c["startupProbe"]
    assert startup["httpGet"] == {"path": "/readyz", "port": "http-metrics"}
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 15 * 60
    assert c["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http-metrics"}
    assert c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http-metrics"}
    # Draining on SIGTERM must finish before the kubelet kills the pod.
    assert pod_spec(worker)["terminationGracePeriodSeconds"] > float(env["BAILU_WORKER_DRAIN_GRACE_S"])
    # Shared memory, and the model store read-only where the values say.
    assert mounts(c)["/dev/shm"]["name"] == "shm"
    assert volumes(worker)["shm"]["emptyDir"]["medium"] == "Memory"
    assert mounts(c)["/models"] == {"name": "model-store", "mountPath": "/models", "readOnly": True}
    claim = volumes(worker)["model-store"]["persistentVolumeClaim"]
    assert claim == {"claimName": f"{PREFIX}-model-store", "readOnly": True}
    assert "nvidia.com/gpu" not in json.dumps(c["resources"])
    assert c["resources"]["requests"]["memory"]
    assert c["resources"]["limits"]["memory"]
    pdb = one(default_manifests, "PodDisruptionBudget", f"{PREFIX}-worker-cpu")
    assert pdb["spec"]["selector"]["matchLabels"]["bailu/worker-pool"] == "cpu"


def test_one_deployment_and_budget_per_pool(demo_manifests: list[Manifest]) -> None:
    names = {m["metadata"]["name"] for m in objects(demo_manifests, "Deployment")}
    assert names == {f"{PREFIX}-gateway", f"{PREFIX}-worker-cpu", f"{PREFIX}-worker-sim", f"{PREFIX}-collector"}
    budgets = {m["metadata"]["name"] for m in objects(demo_manifests, "PodDisruptionBudget")}
    assert budgets == names - {f"{PREFIX}-collector"}, "one collector replica: no budget"
    sim = container(one(demo_manifests, "Deployment", f"{PREFIX}-worker-sim"), "worker")
    env = env_values(sim)
    assert env["BAILU_WORKER_ENGINE"] == "sim"
    assert env["BAILU_WORKER_MODEL_NAME"] == "bailu-sim"
    assert "BAILU_WORKER_MODEL_PATH" not in env
    # One headless Service finds every pool's pods.
    service = one(demo_manifests, "Service", f"{PREFIX}-worker")
    for pool in ("cpu", "sim"):
        assert selects(
            service["spec"]["selector"], pod_labels(one(demo_manifests, "Deployment", f"{PREFIX}-worker-{pool}"))
        )


def test_gpu_pool(gpu_manifests: list[Manifest]) -> None:
    worker = one(gpu_manifests, "Deployment", f"{PREFIX}-worker-gpu")
    spec, c = pod_spec(worker), container(worker, "worker")
    assert c["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert c["resources"]["requests"]["nvidia.com/gpu"] == 1
    assert spec["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in spec["tolerations"]
    env = env_values(c)
    assert env["BAILU_WORKER_MODEL_PATH"] == "/models/base/Qwen2.5-7B-Instruct"
    assert mounts(c)["/models"]["readOnly"] is True
    # vLLM, in its own image, on the pool's one GPU, with the example's engine knobs.
    assert env["BAILU_WORKER_ENGINE"] == "vllm"
    assert c["image"] == "bailu/worker-vllm:0.1.0"
    assert env["BAILU_WORKER_TENSOR_PARALLEL_SIZE"] == "1"
    assert env["BAILU_WORKER_ENGINE_HOST"] == "127.0.0.1"
    assert float(env["BAILU_WORKER_GPU_MEMORY_UTILIZATION"]) == 0.9
    assert (env["BAILU_WORKER_MAX_LORAS"], env["BAILU_WORKER_MAX_LORA_RANK"]) == ("4", "64")
    startup = c["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 30 * 60
    assert float(env["BAILU_WORKER_ENGINE_START_TIMEOUT_S"]) == startup["periodSeconds"] * startup["failureThreshold"]
    assert worker["spec"]["strategy"]["rollingUpdate"] == {"maxSurge": 0, "maxUnavailable": 1}
    stopping = float(env["BAILU_WORKER_DRAIN_GRACE_S"]) + float(env["BAILU_WORKER_ENGINE_STOP_GRACE_S"])
    assert float(env["BAILU_WORKER_DRAIN_GRACE_S"]) == 60
    assert spec["terminationGracePeriodSeconds"] > stopping
    assert volumes(worker)["shm"]["emptyDir"]["sizeLimit"] == "8Gi"
    assert spec["topologySpreadConstraints"][0]["labelSelector"]["matchLabels"]["bailu/worker-pool"] == "gpu"
    assert "runtimeClassName" not in spec


def test_pool_entries_override_defaults_key_by_key(full_manifests: list[Manifest]) -> None:
    gpu = one(full_manifests, "Deployment", f"{PREFIX}-worker-gpu")
    sim = one(full_manifests, "Deployment", f"{PREFIX}-worker-sim")
    assert gpu["spec"]["replicas"] == 0
    assert sim["spec"]["replicas"] == 1
    gpu_env, sim_env = env_values(container(gpu, "worker")), env_values(container(sim, "worker"))
    assert gpu_env["BAILU_WORKER_WARMUP"] == "false"
    assert sim_env["BAILU_WORKER_WARMUP"] == "true"
    assert gpu_env["BAILU_WORKER_MAX_QUEUE"] == sim_env["BAILU_WORKER_MAX_QUEUE"] == "16"
    assert gpu_env["BAILU_WORKER_LOG_LEVEL"] == "INFO"  # from the chart's defaults, kept by the merge
    assert gpu_env["BAILU_WORKER_DRAIN_GRACE_S"] == "45.5"
    assert pod_spec(gpu)["terminationGracePeriodSeconds"] == 46 + 30
    assert json.loads(gpu_env["BAILU_WORKER_ADAPTERS"]) == {
        "poet": "/models/adapters/poet/v3",
        "legal": "/opt/adapters/legal",
    }
    assert (gpu_env["BAILU_WORKER_MODEL_TYPE"], gpu_env["BAILU_WORKER_TEMPLATE"]) == ("qwen2", "qwen2_5")
    assert container(gpu, "worker")["resources"]["limits"]["nvidia.com/gpu"] == 2
    assert pod_spec(gpu)["runtimeClassName"] == "nvidia"
    assert env_values(container(sim, "worker"))["OMP_NUM_THREADS"] == "1"
    assert one(full_manifests, "PodDisruptionBudget", f"{PREFIX}-worker-gpu")["spec"]["maxUnavailable"] == "50%"


# --- storage --------------------------------------------------------------------------------------


def test_storage_claims(default_manifests: list[Manifest]) -> None:
    for name, size in (("model-store", "100Gi"), ("datasets", "20Gi")):
        claim = one(default_manifests, "PersistentVolumeClaim", f"{PREFIX}-{name}")
        assert claim["spec"]["accessModes"] == ["ReadWriteMany"]
        assert claim["spec"]["resources"]["requests"]["storage"] == size
        assert "storageClassName" not in claim["spec"]  # the cluster's default class
        assert claim["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"


def test_storage_class_options(full_manifests: list[Manifest], demo_manifests: list[Manifest]) -> None:
    assert one(full_manifests, "PersistentVolumeClaim", f"{PREFIX}-model-store")["spec"]["storageClassName"] == ""
    datasets = one(full_manifests, "PersistentVolumeClaim", f"{PREFIX}-datasets")
    assert datasets["spec"]["storageClassName"] == "nfs-client"
    assert "annotations" not in datasets["metadata"]
    # The demo's claims are single-node (the datasets claim is used: the collector mounts it) and not kept.
    claims = {m["metadata"]["name"]: m for m in objects(demo_manifests, "PersistentVolumeClaim")}
    assert set(claims) == {f"{PREFIX}-model-store", f"{PREFIX}-datasets"}
    for claim in claims.values():
        assert claim["spec"]["accessModes"] == ["ReadWriteOnce"]
        assert "annotations" not in claim["metadata"]
    collector = one(demo_manifests, "Deployment", f"{PREFIX}-collector")
    assert volumes(collector)["datasets"]["persistentVolumeClaim"]["claimName"] == f"{PREFIX}-datasets"
    assert collector["spec"]["strategy"] == {"type": "Recreate"}


def test_existing_claims(existing_manifests: list[Manifest]) -> None:
    assert not objects(existing_manifests, "PersistentVolumeClaim")
    worker = one(existing_manifests, "Deployment", f"{PREFIX}-worker-cpu")
    assert volumes(worker)["model-store"]["persistentVolumeClaim"]["claimName"] == "models"


# --- network policies -----------------------------------------------------------------------------


def test_network_policies_allow_only_the_designed_flows(
    default_manifests: list[Manifest], gpu_manifests: list[Manifest]
) -> None:
    from tests.chart.netpol import Pod, allowed, release_pod

    for m, open_gateway in ((default_manifests, True), (gpu_manifests, False)):
        gateway, worker = release_pod(m, "gateway"), release_pod(m, "worker")
        redis, test = release_pod(m, "redis"), release_pod(m, "test")
        collector = release_pod(m, "collector")
        prometheus = Pod("monitoring", {"app.kubernetes.io/name": "prometheus"})
        ingress_nginx = Pod("ingress-nginx", {"app.kubernetes.io/name": "ingress-nginx"})
        stranger = Pod("other", {"app": "curious"})
        neighbour = Pod(NAMESPACE, {"app": "unrelated"})
        dns = Pod("kube-system", {"k8s-app": "kube-dns"})
        # Clients reach the gateway; the helm test pod always does.
        assert allowed(m, ingress_nginx, gateway, 8000)
        assert allowed(m, test, gateway, 8000)
        assert allowed(m, stranger, gateway, 8000) is open_gateway
        # gateway → workers over gRPC, and nobody else.
        assert allowed(m, gateway, worker, 50051)
        assert not allowed(m, stranger, worker, 50051)
        assert not allowed(m, neighbour, worker, 50051)
        assert not allowed(m, test, worker, 50051)
        assert not allowed(m, worker, gateway, 8000), "workers reach Redis and DNS only"
        # Prometheus scrapes /metrics on both; it gets nothing else.
        assert allowed(m, prometheus, worker, 9091)
        assert allowed(m, prometheus, gateway, 8000)
        assert not allowed(m, prometheus, worker, 50051)
        assert not allowed(m, prometheus, redis, 6379)
        # Redis only from its clients: the gateway, the collector, the workers (registry change events) and
        # training runs (they announce what they publish).
        trainer = release_pod(m, "trainer")
        assert allowed(m, gateway, redis, 6379)
        assert allowed(m, collector, redis, 6379)
        assert allowed(m, worker, redis, 6379)
        assert allowed(m, trainer, redis, 6379)
        assert not allowed(m, test, redis, 6379)
        assert not allowed(m, neighbour, redis, 6379)
        assert not allowed(m, stranger, redis, 6379)
        # The collector: Prometheus scrapes it on 9092; it reaches Redis (above) and nothing else of the release.
        assert allowed(m, prometheus, collector, 9092)
        assert not allowed(m, stranger, collector, 9092)
        assert not allowed(m, neighbour, collector, 9092)
        assert not allowed(m, gateway, collector, 9092)
        assert not allowed(m, collector, worker, 50051)
        assert not allowed(m, collector, worker, 9091)
        assert not allowed(m, collector, gateway, 8000)
        assert not allowed(m, worker, collector, 9092)
        # Training runs: nothing reaches them, and they reach nothing of the release but Redis.
        for peer in (gateway, worker, collector, test, prometheus, neighbour, stranger):
            assert not allowed(m, peer, trainer, 8000)
            assert not allowed(m, peer, trainer, 9091)
        for target, port in ((gateway, 8000), (worker, 50051), (worker, 9091), (collector, 9092)):
            assert not allowed(m, trainer, target, port)
        assert not allowed(m, trainer, Pod("default", {"component": "kube-apiserver"}), 443)
        # DNS for everyone in the release, and no other egress; only a collector that starts training runs
        # reaches the Kubernetes API (the GPU example's does: test_collector_reaches_the_kubernetes_api_...).
        for pod in (gateway, worker, redis, test, collector, trainer):
            assert allowed(m, pod, dns, 53, "UDP")
            assert allowed(m, pod, dns, 53, "TCP")
            assert allowed(m, pod, stranger, 443) is (pod is collector and starts_runs_in(m))


def test_default_deny_covers_every_release_pod(default_manifests: list[Manifest]) -> None:
    deny = one(default_manifests, "NetworkPolicy", f"{PREFIX}-default-deny")
    assert deny["spec"]["policyTypes"] == ["Ingress", "Egress"]
    assert "ingress" not in deny["spec"]
    assert "egress" not in deny["spec"]
    for workload in workload_pods(default_manifests):
        assert selects(deny["spec"]["podSelector"]["matchLabels"], pod_labels(workload))


def test_network_policies_are_optional_and_external_redis_is_reachable(
    existing_manifests: list[Manifest], helm: Helm
) -> None:
    assert not objects(existing_manifests, "NetworkPolicy")
    manifests = helm.template(values={"redis": {"enabled": False, "external": {"url": "redis://r.example.com:6390/0"}}})
    egress = one(manifests, "NetworkPolicy", f"{PREFIX}-egress")["spec"]["egress"]
    assert {"ports": [{"port": 6390, "protocol": "TCP"}]} in egress


def test_metrics_scraping_can_be_turned_off(render: Render) -> None:
    from tests.chart.netpol import Pod, allowed, release_pod

    manifests = render(values={"networkPolicy": {"metrics": {"enabled": False}}})
    prometheus = Pod("monitoring", {"app.kubernetes.io/name": "prometheus"})
    assert not allowed(manifests, prometheus, release_pod(manifests, "collector"), 9092)
    assert not allowed(manifests, prometheus, release_pod(manifests, "worker"), 9091)
    assert "ingress" not in one(manifests, "NetworkPolicy", f"{PREFIX}-collector")["spec"]


# --- feedback collector ---------------------------------------------------------------------------


def test_collector_deployment(default_manifests: list[Manifest]) -> None:
    collector = one(default_manifests, "Deployment", f"{PREFIX}-collector")
    spec, c = pod_spec(collector), container(collector, "collector")
    gateway = container(one(default_manifests, "Deployment", f"{PREFIX}-gateway"), "gateway")
    env, names = env_values(c), env_names(c)
    assert collector["spec"]["replicas"] == 1
    # The gateway image carries the collector (docker/gateway.Dockerfile installs both extras).
    assert c["image"] == gateway["image"] == "bailu/gateway:0.1.0"
    assert c["args"] == ["python", "-m", "bailu.collector"]
    assert c["ports"] == [{"name": "http-metrics", "containerPort": 9092, "protocol": "TCP"}]
    assert env["BAILU_COLLECTOR_HTTP_PORT"] == "9092"
    # One consumer per pod in the Redis consumer group.
    consumer = next(e for e in c["env"] if e["name"] == "BAILU_COLLECTOR_CONSUMER_NAME")
    assert consumer["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.name"}}
    # Datasets go to the datasets claim, mounted read-write where BAILU_COLLECTOR_DATASET_DIR points.
    assert env["BAILU_COLLECTOR_DATASET_DIR"] == "/datasets"
    assert mounts(c)["/datasets"] == {"name": "datasets", "mountPath": "/datasets"}
    assert volumes(collector)["datasets"]["persistentVolumeClaim"] == {"claimName": f"{PREFIX}-datasets"}
    # The same Redis as the gateway, with the password from the same Secret, defined before the URL.
    assert env["BAILU_COLLECTOR_REDIS_URL"] == env_values(gateway)["BAILU_GATEWAY_REDIS_URL"]
    assert names.index("REDIS_PASSWORD") < names.index("BAILU_COLLECTOR_REDIS_URL")
    password = next(e for e in c["env"] if e["name"] == "REDIS_PASSWORD")["valueFrom"]["secretKeyRef"]
    assert password == {"name": f"{PREFIX}-redis", "key": "redis-password"}
    # Training runs are off by default: no runner, no API token, no Role.
    assert env["BAILU_COLLECTOR_RUNNER"] == "none"
    assert not [n for n in names if n.startswith("BAILU_COLLECTOR_KUBERNETES_")]
    assert spec["automountServiceAccountToken"] is False
    assert spec["serviceAccountName"] == f"{PREFIX}-collector"
    assert one(default_manifests, "ServiceAccount", f"{PREFIX}-collector")["automountServiceAccountToken"] is False
    assert not objects(default_manifests, "Role")
    assert not objects(default_manifests, "RoleBinding")
    # The trigger policy, at the settings' defaults.
    trigger = {k.removeprefix("BAILU_COLLECTOR_TRIGGER_"): v for k, v in env.items() if "_TRIGGER_" in k}
    assert trigger == {
        "MIN_NEW_PAIRS": "200",
        "COOLDOWN_S": "21600",
        "DAILY_CAP": "2",
        "PEAK_WINDOW": "06:00-09:30",
        "TIMEZONE": "UTC",
        "INTERVAL_S": "60",
    }
    # Probes on the probe server's port; resources; locked down like every Bailu container.
    assert c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http-metrics"}
    assert c["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http-metrics"}
    assert c["resources"]["requests"]["cpu"]
    assert c["resources"]["limits"]["memory"]
    assert spec["terminationGracePeriodSeconds"] == 30
    assert spec["enableServiceLinks"] is False
    assert c["securityContext"]["readOnlyRootFilesystem"] is True
    assert c["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    assert spec["securityContext"]["runAsUser"] == 10001
    assert mounts(c)["/tmp"]["name"] == "tmp"
    # A metrics Service for a future ServiceMonitor; no budget for a single replica.
    service = one(default_manifests, "Service", f"{PREFIX}-collector")
    assert service["spec"]["type"] == "ClusterIP"
    assert service["spec"]["ports"] == [
        {"name": "http-metrics", "port": 9092, "targetPort": "http-metrics", "protocol": "TCP"}
    ]
    assert not [p for p in objects(default_manifests, "PodDisruptionBudget") if "collector" in p["metadata"]["name"]]


def test_collector_rbac_when_it_starts_training_runs(full_manifests: list[Manifest]) -> None:
    collector = one(full_manifests, "Deployment", f"{PREFIX}-collector")
    spec, env = pod_spec(collector), env_values(container(collector, "collector"))
    assert env["BAILU_COLLECTOR_RUNNER"] == "kubernetes"
    assert env["BAILU_COLLECTOR_KUBERNETES_NAMESPACE"] == NAMESPACE
    assert env["BAILU_COLLECTOR_KUBERNETES_CRONJOB"] == f"{PREFIX}-trainer"
    assert spec["automountServiceAccountToken"] is True
    # Exactly what KubernetesRunner calls: read the trainer CronJob, create a Job; nothing cluster-wide.
    role = one(full_manifests, "Role", f"{PREFIX}-collector")
    assert role["rules"] == [
        {"apiGroups": ["batch"], "resources": ["cronjobs"], "resourceNames": [f"{PREFIX}-trainer"], "verbs": ["get"]},
        {"apiGroups": ["batch"], "resources": ["jobs"], "verbs": ["create"]},
    ]
    assert len(objects(full_manifests, "Role")) == 1
    assert not objects(full_manifests, "ClusterRole")
    assert not objects(full_manifests, "ClusterRoleBinding")
    binding = one(full_manifests, "RoleBinding", f"{PREFIX}-collector")
    assert binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "Role",
        "name": f"{PREFIX}-collector",
    }
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": f"{PREFIX}-collector", "namespace": NAMESPACE}]
    assert spec["serviceAccountName"] == f"{PREFIX}-collector"
    account = one(full_manifests, "ServiceAccount", f"{PREFIX}-collector")
    assert account["metadata"]["annotations"] == {"example.com/role": "collector"}
    # Two replicas share the consumer group, and get a budget.
    assert collector["spec"]["replicas"] == 2
    assert one(full_manifests, "PodDisruptionBudget", f"{PREFIX}-collector")["spec"]["maxUnavailable"] == 1
    # Trigger values and settings, as the collector reads them.
    assert env["BAILU_COLLECTOR_TRIGGER_MIN_NEW_PAIRS"] == "50"
    assert env["BAILU_COLLECTOR_TRIGGER_COOLDOWN_S"] == "7200.5"
    assert env["BAILU_COLLECTOR_TRIGGER_DAILY_CAP"] == "0"
    assert env["BAILU_COLLECTOR_TRIGGER_PEAK_WINDOW"] == "22:00-24:00"
    assert env["BAILU_COLLECTOR_TRIGGER_TIMEZONE"] == "Europe/Paris"
    assert env["BAILU_COLLECTOR_TRIGGER_INTERVAL_S"] == "15"
    assert env["BAILU_COLLECTOR_BLOCK_LIST"] == "lorem ipsum,spam"
    assert env["BAILU_COLLECTOR_MIN_LETTER_SHARE"] == "0.75"
    assert env["BAILU_COLLECTOR_CLAIM_IDLE_MS"] == "120000"
    assert spec["nodeSelector"] == {"pool": "cpu"}
    assert container(collector, "collector")["image"] == "registry.example.com/bailu/bailu/gateway:0.1.0"


def test_collector_with_an_existing_account_cronjob_and_claim(existing_manifests: list[Manifest]) -> None:
    collector = one(existing_manifests, "Deployment", f"{PREFIX}-collector")
    spec, c = pod_spec(collector), container(collector, "collector")
    env = env_values(c)
    assert not [a for a in objects(existing_manifests, "ServiceAccount") if "collector" in a["metadata"]["name"]]
    assert spec["serviceAccountName"] == "ml-jobs"
    assert spec["automountServiceAccountToken"] is True
    binding = one(existing_manifests, "RoleBinding", f"{PREFIX}-collector")
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "ml-jobs", "namespace": NAMESPACE}]
    role = one(existing_manifests, "Role", f"{PREFIX}-collector")
    assert role["rules"][0]["resourceNames"] == ["nightly-trainer"]
    assert env["BAILU_COLLECTOR_KUBERNETES_CRONJOB"] == "nightly-trainer"
    assert env["BAILU_COLLECTOR_DATASET_DIR"] == "/data"
    assert mounts(c)["/data"]["name"] == "datasets"
    assert volumes(collector)["datasets"]["persistentVolumeClaim"] == {"claimName": "data"}
    assert env["BAILU_COLLECTOR_REDIS_URL"] == "rediss://:$(REDIS_PASSWORD)@redis.example.com:6380/0"
    assert env["BAILU_COLLECTOR_TRIGGER_PEAK_WINDOW"] == ""


def test_collector_reaches_the_kubernetes_api_only_to_start_runs(
    render: Render, default_manifests: list[Manifest], full_manifests: list[Manifest]
) -> None:
    from tests.chart.netpol import Pod, allowed, release_pod

    assert "egress" not in one(default_manifests, "NetworkPolicy", f"{PREFIX}-collector")["spec"]
    api_server = Pod("default", {"component": "kube-apiserver"})
    # Runs on, no CIDRs: the API ports to any address, and nothing else.
    manifests = render(values={"collector": {"startTrainingRuns": True}})
    collector, gateway = release_pod(manifests, "collector"), release_pod(manifests, "gateway")
    assert allowed(manifests, collector, api_server, 443)
    assert allowed(manifests, collector, api_server, 6443)
    assert not allowed(manifests, collector, api_server, 80)
    assert not allowed(manifests, collector, release_pod(manifests, "worker"), 50051)
    assert not allowed(manifests, gateway, api_server, 443)
    # With CIDRs: only those addresses (ipBlock peers; pods are not addressed by CIDR).
    egress = one(full_manifests, "NetworkPolicy", f"{PREFIX}-collector")["spec"]["egress"]
    assert egress == [
        {
            "ports": [{"port": 443, "protocol": "TCP"}, {"port": 6443, "protocol": "TCP"}],
            "to": [{"ipBlock": {"cidr": "198.51.100.10/32"}}, {"ipBlock": {"cidr": "198.51.100.11/32"}}],
        }
    ]
    assert not allowed(full_manifests, release_pod(full_manifests, "collector"), api_server, 443)


def test_collector_can_be_turned_off(render: Render) -> None:
    manifests = render(values={"collector": {"enabled": False}})
    assert not component_objects(manifests, "collector")
    redis_policy = one(manifests, "NetworkPolicy", f"{PREFIX}-redis")
    peers = redis_policy["spec"]["ingress"][0]["from"]
    assert [p["podSelector"]["matchLabels"]["app.kubernetes.io/component"] for p in peers] == [
        "gateway",
        "worker",
        "trainer",
    ]


# --- trainer --------------------------------------------------------------------------------------


def trainer_container(manifests: list[Manifest]) -> dict[str, Any]:
    return container(one(manifests, "CronJob", f"{PREFIX}-trainer"), "trainer")


def mount_for(c: dict[str, Any], path: str) -> dict[str, Any]:
    """The volume mount a path is on (the longest mount path that contains it)."""
    found = [m for m in c.get("volumeMounts", []) if Path(path).is_relative_to(m["mountPath"])]
    assert found, f"{path} is on no volume of {c['name']}"
    return max(found, key=lambda m: len(m["mountPath"]))


def test_trainer_cronjob_is_a_suspended_template_of_a_complete_run(default_manifests: list[Manifest]) -> None:
    cronjob = one(default_manifests, "CronJob", f"{PREFIX}-trainer")
    spec, job = cronjob["spec"], cronjob["spec"]["jobTemplate"]["spec"]
    assert spec["suspend"] is True
    assert spec["concurrencyPolicy"] == "Forbid"
    assert spec["schedule"] == "0 3 * * *"
    assert job["backoffLimit"] <= 2
    assert job["ttlSecondsAfterFinished"] > 0
    assert job["activeDeadlineSeconds"] > 0
    pod = pod_spec(cronjob)
    assert pod["restartPolicy"] == "Never"
    assert pod["serviceAccountName"] == f"{PREFIX}-trainer"
    assert one(default_manifests, "ServiceAccount", f"{PREFIX}-trainer")["automountServiceAccountToken"] is False
    c = container(cronjob, "trainer")
    env, names = env_values(c), env_names(c)
    assert c["image"] == "bailu/trainer:0.1.0"
    assert c["command"] == ["python", "-m", "bailu.trainer"]  # the image's entrypoint, spelled out
    assert "args" not in c
    # No GPU by default: the default pool is a CPU one.
    assert "nvidia.com/gpu" not in json.dumps(c["resources"])
    assert c["resources"]["requests"]["memory"]
    assert c["resources"]["limits"]["memory"]
    # Each path the trainer uses is on the right volume: datasets read-only from the collector's claim, the
    # registry read-write on the model store the workers follow, scratch space in the emptyDir at /tmp.
    datasets = mount_for(c, env["BAILU_TRAINER_DATASET_DIR"])
    assert datasets.get("readOnly") is True
    assert volumes(cronjob)[datasets["name"]]["persistentVolumeClaim"]["claimName"] == f"{PREFIX}-datasets"
    collector = container(one(default_manifests, "Deployment", f"{PREFIX}-collector"), "collector")
    assert env["BAILU_TRAINER_DATASET_DIR"] == env_values(collector)["BAILU_COLLECTOR_DATASET_DIR"]
    registry = mount_for(c, env["BAILU_TRAINER_REGISTRY_DIR"])
    assert not registry.get("readOnly")
    assert volumes(cronjob)[registry["name"]]["persistentVolumeClaim"]["claimName"] == f"{PREFIX}-model-store"
    assert mount_for(c, env["BAILU_TRAINER_WORK_DIR"])["name"] == "tmp"
    assert mount_for(c, env["HF_HOME"])["name"] == "tmp"
    assert volumes(cronjob)["tmp"]["emptyDir"]["sizeLimit"] == "20Gi"
    assert volumes(cronjob)["shm"]["emptyDir"]["medium"] == "Memory"
    # Trains for the pool's model, as the pool serves it; the pool's image holds the checkpoint, which an
    # init container running that image copies to where BAILU_TRAINER_MODEL_PATH points.
    worker = container(one(default_manifests, "Deployment", f"{PREFIX}-worker-cpu"), "worker")
    served = env_values(worker)
    assert env["BAILU_TRAINER_BASE_MODEL"] == served["BAILU_WORKER_MODEL_NAME"]
    assert env["BAILU_TRAINER_MODEL_TYPE"] == served["BAILU_WORKER_MODEL_TYPE"]
    assert env["BAILU_TRAINER_TEMPLATE"] == served["BAILU_WORKER_TEMPLATE"]
    copy = container(cronjob, "base-model")
    assert copy["image"] == worker["image"]
    assert copy["command"][-2:] == [served["BAILU_WORKER_MODEL_PATH"], env["BAILU_TRAINER_MODEL_PATH"]]
    assert (
        mount_for(copy, env["BAILU_TRAINER_MODEL_PATH"])["name"]
        == mount_for(c, env["BAILU_TRAINER_MODEL_PATH"])["name"]
    )
    assert env["BAILU_TRAINER_ADAPTER_NAME"] == "bailu-poet"
    assert env["BAILU_TRAINER_RLHF_TYPE"] == "orpo"
    # The registry the workers follow is the one the trainer publishes to, with the same Redis.
    assert served["BAILU_WORKER_REGISTRY_DIR"] == env["BAILU_TRAINER_REGISTRY_DIR"] == "/models/registry"
    gateway = env_values(container(one(default_manifests, "Deployment", f"{PREFIX}-gateway"), "gateway"))
    assert (
        env["BAILU_TRAINER_REDIS_URL"]
        == served["BAILU_WORKER_REGISTRY_REDIS_URL"]
        == gateway["BAILU_GATEWAY_REDIS_URL"]
    )
    assert names.index("REDIS_PASSWORD") < names.index("BAILU_TRAINER_REDIS_URL")
    # Left to each run: the dataset version (unset means the newest sealed one).
    assert "BAILU_TRAINER_DATASET_VERSION" not in names
    # The operator CLI finds the same places in a pod built from this template.
    assert (env["BAILU_REGISTRY_DIR"], env["BAILU_REDIS_URL"]) == (
        "$(BAILU_TRAINER_REGISTRY_DIR)",
        "$(BAILU_TRAINER_REDIS_URL)",
    )


def test_gpu_training_runs(gpu_manifests: list[Manifest]) -> None:
    cronjob = one(gpu_manifests, "CronJob", f"{PREFIX}-trainer")
    pod, c = pod_spec(cronjob), container(cronjob, "trainer")
    env = env_values(c)
    assert c["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert c["resources"]["requests"]["nvidia.com/gpu"] == 1
    assert pod["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod["tolerations"]
    # The model comes from the model store, where the GPU pool loads it: no copy.
    assert "initContainers" not in pod
    worker = env_values(container(one(gpu_manifests, "Deployment", f"{PREFIX}-worker-gpu"), "worker"))
    assert env["BAILU_TRAINER_MODEL_PATH"] == worker["BAILU_WORKER_MODEL_PATH"] == "/models/base/Qwen2.5-7B-Instruct"
    assert env["BAILU_TRAINER_BASE_MODEL"] == worker["BAILU_WORKER_MODEL_NAME"]
    assert (env["BAILU_TRAINER_MODEL_TYPE"], env["BAILU_TRAINER_TEMPLATE"]) == ("qwen2", "qwen2_5")
    assert env["BAILU_TRAINER_QUANT_BITS"] == "4"
    # The GPU example lets the collector start runs from this CronJob.
    collector = env_values(container(one(gpu_manifests, "Deployment", f"{PREFIX}-collector"), "collector"))
    assert collector["BAILU_COLLECTOR_KUBERNETES_CRONJOB"] == cronjob["metadata"]["name"]


def test_trainer_values_render_as_the_trainer_reads_them(full_manifests: list[Manifest]) -> None:
    cronjob = one(full_manifests, "CronJob", f"{PREFIX}-trainer")
    pod, c = pod_spec(cronjob), container(cronjob, "trainer")
    env = env_values(c)
    assert cronjob["spec"]["suspend"] is False
    assert (cronjob["spec"]["schedule"], cronjob["spec"]["timeZone"]) == ("30 2 * * 6", "Europe/Paris")
    assert c["resources"]["limits"]["nvidia.com/mig-3g.40gb"] == 2
    assert c["resources"]["requests"]["nvidia.com/mig-3g.40gb"] == 2
    assert env["BAILU_TRAINER_LEARNING_RATE"] == "0.0002"
    assert env["BAILU_TRAINER_MAX_STEPS"] == "500"
    assert env["BAILU_TRAINER_MERGE"] == "true"
    assert env["BAILU_TRAINER_QUANTIZE"] == "awq"
    assert env["BAILU_TRAINER_EXTRA_SFT_ARGS"] == "--gradient_checkpointing true --warmup_ratio 0.05"
    assert (env["BAILU_TRAINER_ADAPTER_NAME"], env["BAILU_TRAINER_RLHF_TYPE"]) == ("legal-poet", "dpo")
    assert env["NCCL_DEBUG"] == "WARN"
    assert env["BAILU_TRAINER_REGISTRY_DIR"] == "/models/registry/v1"
    assert env["BAILU_TRAINER_MODEL_PATH"] == "/models/base/big"
    assert env["BAILU_TRAINER_BASE_MODEL"] == "big"
    gpu = env_values(container(one(full_manifests, "Deployment", f"{PREFIX}-worker-gpu"), "worker"))
    assert gpu["BAILU_WORKER_REGISTRY_DIR"] == "/models/registry/v1"
    assert pod["runtimeClassName"] == "nvidia"
    assert pod["priorityClassName"] == "batch-low"
    assert pod["nodeSelector"] == {"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"}
    assert pod["imagePullSecrets"] == [{"name": "regcred"}]
    assert pod_labels(cronjob)["team"] == "ml"
    assert c["image"] == "registry.example.com/bailu/bailu/trainer:0.1.0"
    account = one(full_manifests, "ServiceAccount", f"{PREFIX}-trainer")
    assert account["metadata"]["annotations"] == {"example.com/role": "trainer"}


def test_trainer_with_existing_claims_account_and_external_redis(existing_manifests: list[Manifest]) -> None:
    cronjob = one(existing_manifests, "CronJob", f"{PREFIX}-trainer")
    env = env_values(container(cronjob, "trainer"))
    assert pod_spec(cronjob)["serviceAccountName"] == "ml-jobs"
    assert not [a for a in objects(existing_manifests, "ServiceAccount") if "trainer" in a["metadata"]["name"]]
    assert volumes(cronjob)["model-store"]["persistentVolumeClaim"]["claimName"] == "models"
    assert volumes(cronjob)["datasets"]["persistentVolumeClaim"]["claimName"] == "data"
    assert env["BAILU_TRAINER_DATASET_DIR"] == "/data"
    assert env["BAILU_TRAINER_REDIS_URL"] == "rediss://:$(REDIS_PASSWORD)@redis.example.com:6380/0"


def test_trainer_can_be_turned_off(render: Render) -> None:
    manifests = render(values={"trainer": {"enabled": False}})
    assert not component_objects(manifests, "trainer")
    # The workers still follow the registry (adapters published by other means).
    worker = env_values(container(one(manifests, "Deployment", f"{PREFIX}-worker-cpu"), "worker"))
    assert worker["BAILU_WORKER_REGISTRY_DIR"] == "/models/registry"


def test_without_a_model_store_workers_follow_no_registry(render: Render) -> None:
    manifests = render(values={"trainer": {"enabled": False}, "storage": {"modelStore": {"enabled": False}}})
    worker = container(one(manifests, "Deployment", f"{PREFIX}-worker-cpu"), "worker")
    names = set(env_names(worker))
    assert not names & {"BAILU_WORKER_REGISTRY_DIR", "BAILU_WORKER_REGISTRY_REDIS_URL", "REDIS_PASSWORD"}
    peers = one(manifests, "NetworkPolicy", f"{PREFIX}-redis")["spec"]["ingress"][0]["from"]
    assert "worker" not in [p["podSelector"]["matchLabels"]["app.kubernetes.io/component"] for p in peers]


def kubectl_create_job_from(cronjob: Manifest, name: str) -> Manifest:
    """The Job `kubectl create job NAME --from=cronjob/...` creates: the job template, its labels and
    annotations, the instantiate annotation, the CronJob as owner."""
    template = cronjob["spec"]["jobTemplate"]
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {
            "name": name,
            "namespace": cronjob["metadata"]["namespace"],
            "labels": template["metadata"].get("labels", {}),
            "annotations": {
                **template["metadata"].get("annotations", {}),
                "cronjob.kubernetes.io/instantiate": "manual",
            },
            "ownerReferences": [
                {"apiVersion": "batch/v1", "kind": "CronJob", "name": cronjob["metadata"]["name"], "uid": "0" * 8}
            ],
        },
        "spec": template["spec"],
    }


@pytest.mark.parametrize("kube_version", KUBE_VERSIONS)
def test_a_job_created_from_the_cronjob_is_complete(manifests: list[Manifest], kube_version: str) -> None:
    """`kubectl create job --from=cronjob/<fullname>-trainer retrain-1` gives a valid Job whose pod can start:
    every mount has its volume, every claim and Secret it names is the release's (or the existing one the values
    name), every $(VAR) is defined before its use."""
    job = kubectl_create_job_from(one(manifests, "CronJob", f"{PREFIX}-trainer"), "retrain-1")
    assert validation_error(job, kube_version) is None, validation_error(job, kube_version)
    pod = job["spec"]["template"]["spec"]
    declared = {v["name"] for v in pod["volumes"]}
    claims = {m["metadata"]["name"] for m in objects(manifests, "PersistentVolumeClaim")} | {"models", "data"}
    secrets = {m["metadata"]["name"] for m in objects(manifests, "Secret")} | {"redis-pw"}
    for volume in pod["volumes"]:
        if "persistentVolumeClaim" in volume:
            assert volume["persistentVolumeClaim"]["claimName"] in claims
    for c in [*pod.get("initContainers", []), *pod["containers"]]:
        assert {m["name"] for m in c["volumeMounts"]} <= declared, c["name"]
        defined: set[str] = set()
        for var in c.get("env", []):
            for ref in re.findall(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)", var.get("value", "")):
                assert ref in defined, f"{c['name']}: {var['name']} uses $({ref}) before it is defined"
            if "valueFrom" in var and "secretKeyRef" in var["valueFrom"]:
                assert var["valueFrom"]["secretKeyRef"]["name"] in secrets
            defined.add(var["name"])
    assert pod["restartPolicy"] == "Never"


@pytest.mark.parametrize("release", ["bailu", "writing", "bailu-prod", "a-quite-long-release-name-for-a-helm-chart-x"])
def test_the_cli_names_the_trainer_cronjob_as_the_chart_does(helm: Helm, release: str) -> None:
    from bailu.cli.retrain import trainer_cronjob

    out = helm.run(
        "template", release, str(CHART), "--namespace", NAMESPACE, "--show-only", "templates/trainer/cronjob.yaml"
    )
    rendered = yaml.safe_load(out)
    assert rendered["metadata"]["name"] == trainer_cronjob(release)


# --- helm test and notes --------------------------------------------------------------------------


def test_helm_test_pod(default_manifests: list[Manifest]) -> None:
    pod = one(default_manifests, "Pod", f"{PREFIX}-test-completion")
    assert pod["metadata"]["annotations"]["helm.sh/hook"] == "test"
    assert pod["spec"]["restartPolicy"] == "Never"
    c = container(pod, "test")
    env = env_values(c)
    assert env["GATEWAY_URL"] == f"http://{PREFIX}-gateway.{NAMESPACE}.svc.cluster.local:8000"
    assert env["MODEL"] == "smollm2-135m-instruct"
    key = next(e for e in c["env"] if e["name"] == "API_KEY")["valueFrom"]["secretKeyRef"]
    assert key["name"] == f"{PREFIX}-api-keys"
    assert key["key"] == "api-key"
    assert c["command"] == ["python", "-c"]
    assert "/v1/chat/completions" in c["args"][0]
    assert c["image"] == container(one(default_manifests, "Deployment", f"{PREFIX}-gateway"), "gateway")["image"]


def test_no_test_pod_when_disabled(existing_manifests: list[Manifest]) -> None:
    assert not objects(existing_manifests, "Pod")


def test_notes_tell_how_to_reach_the_gateway_and_get_the_key(helm: Helm) -> None:
    notes = helm.notes()
    assert f"port-forward service/{PREFIX}-gateway 8000:8000" in notes
    assert f"get secret {PREFIX}-api-keys -o jsonpath='{{.data.api-key}}' | base64 -d" in notes
    assert "curl -s $BAILU_URL/v1/chat/completions" in notes
    assert '"model": "smollm2-135m-instruct"' in notes
    assert f"helm test {RELEASE}" in notes
    existing = helm.notes({"gateway": {"apiKeys": {"existingSecret": "my-keys"}}})
    assert 'your Secret "my-keys"' in existing
    assert "rollout restart" in existing
    assert f"deployment/{PREFIX}-collector turns feedback into datasets" in notes
    assert "Training runs: off (collector.startTrainingRuns=false)" in notes
    runs = helm.notes({"collector": {"startTrainingRuns": True}})
    assert f"created as Jobs from cronjob/{PREFIX}-trainer" in runs
    # Retraining by hand: kubectl and the CLI.
    assert f"kubectl -n {NAMESPACE} create job --from=cronjob/{PREFIX}-trainer $JOB" in notes
    assert f"kubectl -n {NAMESPACE} logs -f job/$JOB" in notes
    assert f"bailu retrain --namespace {NAMESPACE} --release {RELEASE}" in notes
    assert 'adapter "bailu-poet"\nfor model "smollm2-135m-instruct" (pool cpu), on CPU' in notes
    assert "Retraining" not in helm.notes({"trainer": {"enabled": False}})
