"""The manifests under k8s/ are what a KubeRay cluster accepts, and every size says the same numbers.

No cluster is needed: RayService and RayJob are checked against the openAPIV3Schema of the
KubeRay CRDs in tests/data/k8s-crds (unknown fields rejected, as `kubectl apply` does by
default); core objects against the Kubernetes OpenAPI schema that `kubernetes-validate` ships.
The Prometheus Operator CRDs are not available offline, so PodMonitor/ServiceMonitor are
checked structurally: each must select pods or Services of ours and name a port they declare.
"""

from __future__ import annotations

import copy
import functools
import importlib
import json
import math
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml
from typer.testing import CliRunner

from rayscale import k8s
from rayscale.cli.k8s import k8s_app
from rayscale.config import ServeConfig
from rayscale.errors import ConfigError
from rayscale.serve.app import parse_app_args

from conftest import start_local_ray

ROOT = Path(__file__).resolve().parent.parent
K8S = ROOT / "k8s"
CRDS = Path(__file__).resolve().parent / "data" / "k8s-crds"
SIZES = (1, 2, 4, 8)
KUBERNETES_VERSION = "1.30"  # the oldest Kubernetes the manifests target
CORE_KINDS = {"Namespace", "PersistentVolumeClaim", "Job", "Deployment", "Service", "ConfigMap"}
_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


# ------------------------------------------------------------------------------ schema handling


def _strict(schema: Any) -> Any:
    """A CRD's structural OpenAPI schema as JSON Schema, with the API server's semantics.

    * objects with ``properties`` reject unknown fields (strict field validation), unless
      ``x-kubernetes-preserve-unknown-fields``; embedded resources also allow apiVersion/kind/metadata;
    * ``x-kubernetes-int-or-string`` accepts both (the CRDs pair it with ``anyOf``, not always);
    * ``nullable`` admits null. Other ``x-kubernetes-*`` keys are annotations for the server.
    """
    if isinstance(schema, list):
        return [_strict(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: _strict(v) for k, v in schema.items() if not k.startswith("x-kubernetes-") and k != "nullable"}
    if schema.get("x-kubernetes-int-or-string"):
        out.pop("type", None)
        out.setdefault("anyOf", [{"type": "integer"}, {"type": "string"}])
    if schema.get("nullable") and "type" in out:
        out["type"] = [out["type"], "null"]
    if "properties" in out and "additionalProperties" not in out and not schema.get("x-kubernetes-preserve-unknown-fields"):
        if schema.get("x-kubernetes-embedded-resource"):
            for key in ("apiVersion", "kind", "metadata"):
                out["properties"].setdefault(key, {})
        out["additionalProperties"] = False
    return out


@functools.cache
def crd_validator(kind: str) -> jsonschema.Validator:
    plural = {"RayService": "rayservices", "RayJob": "rayjobs", "RayCluster": "rayclusters"}[kind]
    crd = yaml.load((CRDS / f"ray.io_{plural}.yaml").read_text(), Loader=_LOADER)
    (version,) = [v for v in crd["spec"]["versions"] if v["name"] == "v1"]
    schema = _strict(version["schema"]["openAPIV3Schema"])
    # metadata is `type: object` in every CRD; the API server checks it as ObjectMeta.
    schema["properties"]["metadata"] = {"$ref": "#/$defs/ObjectMeta"}
    schema["$defs"] = {"ObjectMeta": _object_meta_schema()}
    return jsonschema.Draft202012Validator(schema)


def _object_meta_schema() -> dict[str, Any]:
    strings = {"type": "object", "additionalProperties": {"type": "string"}}
    return {
        "type": "object",
        "required": ["name"],
        "additionalProperties": False,
        "properties": {
            "name": {"type": "string", "pattern": r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$", "maxLength": 63},
            "namespace": {"type": "string", "pattern": r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$", "maxLength": 63},
            "labels": strings,
            "annotations": strings,
        },
    }


def validate(obj: dict[str, Any]) -> None:
    """Raises with the offending path when the API server (or KubeRay's CRD) would reject ``obj``."""
    kind = obj["kind"]
    if kind in ("RayService", "RayJob"):
        errors = sorted(crd_validator(kind).iter_errors(obj), key=lambda e: list(e.absolute_path))
        if errors:
            e = errors[0]
            raise AssertionError(f"{kind} {'/'.join(map(str, e.absolute_path))}: {e.message}")
    elif kind in CORE_KINDS:
        kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)
    elif kind in ("PodMonitor", "ServiceMonitor"):
        pass  # checked against the objects they select, in check_monitors
    else:
        raise AssertionError(f"no validation for kind {kind}")


# ------------------------------------------------------------------------------ kustomize builds


def _load_all(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.load_all(path.read_text(), Loader=_LOADER) if d]


def _pointer(doc: Any, path: str) -> tuple[Any, str | int]:
    parts = [p.replace("~1", "/").replace("~0", "~") for p in path.strip("/").split("/")]
    for p in parts[:-1]:
        doc = doc[int(p)] if isinstance(doc, list) else doc[p]
    last = parts[-1]
    return doc, (int(last) if isinstance(doc, list) else last)


def _apply_json6902(obj: dict[str, Any], ops: list[dict[str, Any]]) -> None:
    for op in ops:
        parent, key = _pointer(obj, op["path"])
        if op["op"] == "replace":
            parent[key]  # replace needs an existing target (KeyError/IndexError otherwise)
            parent[key] = copy.deepcopy(op["value"])
        elif op["op"] == "add":
            if isinstance(parent, list):
                parent.insert(key, copy.deepcopy(op["value"]))
            else:
                parent[key] = copy.deepcopy(op["value"])
        else:
            raise AssertionError(f"patch op {op['op']} is not used by k8s/ overlays")


def _matches(obj: dict[str, Any], target: dict[str, Any]) -> bool:
    group, _, version = obj["apiVersion"].rpartition("/")
    return (
        target.get("kind", obj["kind"]) == obj["kind"]
        and target.get("name", obj["metadata"]["name"]) == obj["metadata"]["name"]
        and target.get("group", group) == group
        and target.get("version", version) == version
    )


KUSTOMIZATION_KEYS = {
    "apiVersion",
    "kind",
    "namespace",
    "resources",
    "images",
    "patches",
    "generatorOptions",
    "configMapGenerator",
}


def kustomize_build(directory: Path) -> list[dict[str, Any]]:
    """The subset of kustomize that k8s/ uses, in Python; test_python_build_equals_kubectl keeps it honest."""
    kust = yaml.safe_load((directory / "kustomization.yaml").read_text())
    assert set(kust) <= KUSTOMIZATION_KEYS, f"{directory}: kustomize features this build lacks: {set(kust) - KUSTOMIZATION_KEYS}"
    objs: list[dict[str, Any]] = []
    for res in kust.get("resources", []):
        path = directory / res
        objs += kustomize_build(path) if path.is_dir() else _load_all(path)
    for gen in kust.get("configMapGenerator", []):
        data = {}
        for spec in gen.get("files", []):
            key, _, file = spec.partition("=") if "=" in spec else (Path(spec).name, "", spec)
            data[key] = (directory / file).read_text()
        labels = gen.get("options", {}).get("labels")
        assert kust.get("generatorOptions", {}).get("disableNameSuffixHash"), "generated names must be stable"
        objs.append(
            {
                "apiVersion": "v1",
                "kind": "ConfigMap",
                "metadata": {"name": gen["name"], **({"labels": labels} if labels else {})},
                "data": data,
            }
        )
    for patch in kust.get("patches", []):
        ops = yaml.safe_load((directory / patch["path"]).read_text())
        targets = [o for o in objs if _matches(o, patch["target"])]
        assert len(targets) == 1, f"{directory}: patch {patch['path']} matches {len(targets)} objects"
        _apply_json6902(targets[0], ops)
    for image in kust.get("images", []):
        for obj in objs:
            for container in _containers(obj):
                name, _, tag = container["image"].partition(":")
                if name == image["name"]:
                    container["image"] = f"{image.get('newName', name)}:{image.get('newTag', tag)}"
    if "namespace" in kust:
        for obj in objs:
            if obj["kind"] != "Namespace":
                obj["metadata"]["namespace"] = kust["namespace"]
    return objs


def kubectl_build(directory: Path) -> list[dict[str, Any]]:
    done = subprocess.run(["kubectl", "kustomize", str(directory)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return [d for d in yaml.load_all(done.stdout, Loader=_LOADER) if d]


def _pod_specs(obj: dict[str, Any]) -> list[dict[str, Any]]:
    spec = obj.get("spec", {})
    if obj["kind"] in ("Deployment", "Job"):
        return [spec["template"]["spec"]]
    if obj["kind"] in ("RayService", "RayJob"):
        cluster = spec.get("rayClusterConfig") or spec.get("rayClusterSpec")
        groups = [cluster["headGroupSpec"], *cluster.get("workerGroupSpecs", [])]
        pods = [g["template"]["spec"] for g in groups]
        if "submitterPodTemplate" in spec:
            pods.append(spec["submitterPodTemplate"]["spec"])
        return pods
    return []


def _containers(obj: dict[str, Any]) -> list[dict[str, Any]]:
    return [c for pod in _pod_specs(obj) for c in pod.get("initContainers", []) + pod["containers"]]


def _key(obj: dict[str, Any]) -> tuple[str, str]:
    return obj["kind"], obj["metadata"]["name"]


def _normalised(objs: list[dict[str, Any]]) -> dict[tuple[str, str], dict[str, Any]]:
    """Objects by (kind, name), serveConfigV2 parsed so that its formatting does not matter."""
    out = {}
    for obj in objs:
        obj = copy.deepcopy(obj)
        if obj["kind"] == "RayService":
            obj["spec"]["serveConfigV2"] = yaml.safe_load(obj["spec"]["serveConfigV2"])
        assert _key(obj) not in out, f"{_key(obj)} defined twice"
        out[_key(obj)] = obj
    return out


def _find(objs: list[dict[str, Any]], kind: str, name: str | None = None) -> dict[str, Any]:
    found = [o for o in objs if o["kind"] == kind and (name is None or o["metadata"]["name"] == name)]
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    return found[0]


def _core(objs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [o for o in objs if not k8s.is_monitoring(o)]


# ------------------------------------------------------------------------------ shared checks


def serve_app(rayservice: dict[str, Any]) -> dict[str, Any]:
    config = yaml.safe_load(rayservice["spec"]["serveConfigV2"])
    (app,) = config["applications"]
    return app


def check_sizes(objs: list[dict[str, Any]], replicas: int, gpus_per_replica: float = 1.0) -> None:
    """N replicas ⇒ the GPU workers that hold them ⇒ Triton on as many GPUs ⇒ the sweep says N."""
    workers = k8s.gpu_workers_for(replicas, gpus_per_replica)
    rs = _find(objs, "RayService")
    args = serve_app(rs)["args"]
    assert (args["replicas"], args["gpus_per_replica"]) == (replicas, gpus_per_replica)
    (group,) = rs["spec"]["rayClusterConfig"]["workerGroupSpecs"]
    assert group["replicas"] == group["minReplicas"] == group["maxReplicas"] == workers
    (worker,) = group["template"]["spec"]["containers"]
    assert worker["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert workers == math.ceil(replicas * gpus_per_replica) or 1 / gpus_per_replica % 1 > 0
    assert replicas * gpus_per_replica <= workers  # every replica fits
    head = rs["spec"]["rayClusterConfig"]["headGroupSpec"]
    assert head["rayStartParams"]["num-gpus"] == "0"
    assert "nvidia.com/gpu" not in head["template"]["spec"]["containers"][0]["resources"]["limits"]

    triton = _find(objs, "Deployment", "triton")["spec"]["template"]["spec"]
    assert triton["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == workers
    repo_cmd = triton["initContainers"][0]["command"][-1]
    assert f"rayscale triton repo --gpus {workers} --out /model_repository" in repo_cmd

    bench = _find(objs, "RayJob", "rayscale-bench")["spec"]
    entry = bench["entrypoint"].split()
    assert entry[:2] == ["rayscale", "bench"]
    opt = dict(zip(entry[2::2], entry[3::2], strict=True))
    assert opt["--replicas"] == str(replicas)
    front = "rayscale-ingress" if args["ingress"] == "direct" else rs["spec"]["serveService"]["metadata"]["name"]
    assert opt["--url"] == f"http://{front}:8000"
    wait = _find(objs, "RayJob", "rayscale-bench")["spec"]["submitterPodTemplate"]["spec"]["initContainers"][0]
    assert f"http://{front}:8000/v2/health/ready" in wait["command"][-1]
    assert opt["--concurrency"] == "1,4,16,64,128,256" and opt["--images-per-request"] == "32"
    assert opt["--out"].startswith("/results/") and opt["--out"].endswith(".json")
    # One command: KubeRay's submitter pastes the entrypoint into a shell line.
    assert not set(bench["entrypoint"]) & set(";&|<>`$\n")


def check_serve_config(rayservice: dict[str, Any]) -> None:
    """A Serve config file Ray accepts, whose app args are a ServeConfig as the builder parses them."""
    from ray.serve.schema import ServeDeploySchema

    config = yaml.safe_load(rayservice["spec"]["serveConfigV2"])
    ServeDeploySchema.model_validate(config)
    cfg = parse_app_args(serve_app(rayservice)["args"])
    assert (cfg.host, cfg.port, cfg.grpc_port) == ("0.0.0.0", 8000, 8001)
    if cfg.ingress == "direct":
        # rayscale's HAProxy takes port 8000 on the head: Serve runs no proxy, and none of its env.
        assert config["proxy_location"] == "Disabled"
        assert "http_options" not in config and "controller_options" not in config
    else:
        assert config["proxy_location"] == "EveryNode"
        assert config["http_options"] == {"host": "0.0.0.0", "port": 8000}
        assert "RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH" in config["controller_options"]["runtime_env"]["env_vars"]
    app = serve_app(rayservice)
    module_name, _, attr = app["import_path"].partition(":")
    builder = getattr(importlib.import_module(module_name), attr)
    assert callable(builder)
    cfg = ServeConfig(**app["args"])  # the builder's own argument type accepts them as they are
    assert cfg == parse_app_args(app["args"])
    assert cfg.model_dir == "/models/openclip_vit_b32" and cfg.provider == "cuda"
    assert "api_token" not in app["args"]
    assert app["name"] == cfg.app_name and app["route_prefix"] == cfg.route_prefix


def check_volumes_and_exposure(objs: list[dict[str, Any]]) -> None:
    claims = {o["metadata"]["name"] for o in objs if o["kind"] == "PersistentVolumeClaim"}
    for obj in objs:
        for pod in _pod_specs(obj):
            volumes = {v["name"]: v for v in pod.get("volumes", [])}
            for c in pod.get("initContainers", []) + pod["containers"]:
                for m in c.get("volumeMounts", []):
                    assert m["name"] in volumes, f"{_key(obj)} {c['name']} mounts undefined volume {m['name']}"
                    claim = volumes[m["name"]].get("persistentVolumeClaim")
                    if claim:
                        assert claim["claimName"] in claims, f"{_key(obj)} uses missing PVC {claim['claimName']}"
                        if m["mountPath"] == "/models" and obj["kind"] != "Job":
                            assert m.get("readOnly") and claim.get("readOnly"), (
                                f"{_key(obj)} {c['name']} must mount the model read-only"
                            )
    for obj in objs:
        if obj["kind"] == "Service":
            assert obj["spec"].get("type", "ClusterIP") == "ClusterIP", f"{_key(obj)} is exposed outside the cluster"
            assert 8265 not in [p["port"] for p in obj["spec"]["ports"]]
        if obj["kind"] == "RayService":
            assert obj["spec"]["serveService"]["spec"]["type"] == "ClusterIP"
            ports = obj["spec"]["serveService"]["spec"]["ports"]
            assert 8265 not in [p["port"] for p in ports]
            assert all(p["name"] == "serve" or p["name"].startswith("serve-") for p in ports), "KubeRay drops other ports"
        for key in ("rayClusterConfig", "rayClusterSpec"):
            cluster = obj.get("spec", {}).get(key)
            if cluster:
                head = cluster["headGroupSpec"]
                assert head.get("serviceType", "ClusterIP") == "ClusterIP" and not head.get("enableIngress")


def check_monitors(objs: list[dict[str, Any]], monitors: list[dict[str, Any]]) -> None:
    pods = []  # (labels, {port name: number})
    for obj in objs:
        if obj["kind"] == "Deployment":
            templates = [obj["spec"]["template"]]
        elif obj["kind"] == "RayService":
            cluster = obj["spec"]["rayClusterConfig"]
            templates = [g["template"] for g in [cluster["headGroupSpec"], *cluster["workerGroupSpecs"]]]
        else:
            continue
        for t in templates:
            ports = {p["name"]: p["containerPort"] for c in t["spec"]["containers"] for p in c.get("ports", [])}
            pods.append((t["metadata"]["labels"], ports))
    services = [o for o in objs if o["kind"] == "Service"]

    def selected(selector: dict[str, str], labels: dict[str, str]) -> bool:
        return all(labels.get(k) == v for k, v in selector.items())

    scraped: dict[int, int] = {}
    for m in monitors:
        assert m["apiVersion"] == "monitoring.coreos.com/v1"
        assert m["metadata"]["namespace"] in m["spec"]["namespaceSelector"]["matchNames"]
        selector = m["spec"]["selector"]["matchLabels"]
        if m["kind"] == "PodMonitor":
            endpoints = m["spec"]["podMetricsEndpoints"]
            targets = [ports for labels, ports in pods if selected(selector, labels)]
        else:
            endpoints = m["spec"]["endpoints"]
            matched = [s for s in services if selected(selector, s["metadata"]["labels"])]
            targets = [{p["name"]: p["port"] for p in s["spec"]["ports"]} for s in matched]
        assert targets, f"{m['kind']} {m['metadata']['name']} selects nothing"
        for ep in endpoints:
            assert ep["path"] == "/metrics"
            for ports in targets:
                if ep["port"] in ports:
                    scraped[ports[ep["port"]]] = scraped.get(ports[ep["port"]], 0) + 1
    # Ray's metrics, the rayscale exporter (every GPU worker and the head), Triton's metrics.
    assert {8080, 9400, 8002} <= set(scraped), scraped
    assert scraped[9400] >= 2 and scraped[8080] >= 2


def _head_and_workers(rs: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    cluster = rs["spec"]["rayClusterConfig"]
    (group,) = cluster["workerGroupSpecs"]
    return cluster["headGroupSpec"]["template"], group["template"]


CLUSTER = "rayscale-x7k2p"  # a RayService's RayCluster: its name plus a random suffix


def _kuberay_pod_labels(
    template: dict[str, Any], node_type: str, creator: str = "RayService", cluster: str = CLUSTER
) -> dict[str, str]:
    """The labels KubeRay 1.x gives a Ray pod (common/pod.go labelPod, BuildPod): its own, then the
    template's, then for a RayService's pods ray.io/serve: "true" on workers; on the head "false"
    until the RayService controller finds its /-/healthz answering, which it never asks with
    excludeHeadPodFromServeSvc (rayservice_controller.go updateHeadPodServeLabel)."""
    own = {
        "ray.io/is-ray-node": "yes",
        "ray.io/cluster": cluster,
        "ray.io/node-type": node_type,
        "app.kubernetes.io/name": "kuberay",
        "app.kubernetes.io/created-by": "kuberay-operator",
    }
    pod = own | {k: v for k, v in template["metadata"]["labels"].items() if k not in ("ray.io/node-type", "ray.io/cluster")}
    if creator == "RayService":
        pod["ray.io/serve"] = "true" if node_type == "worker" else "false"
    return pod


def _container_ports(template: dict[str, Any]) -> dict[str, int]:
    return {p["name"]: p["containerPort"] for c in template["spec"]["containers"] for p in c.get("ports", [])}


def _endpoints(spec: dict[str, Any], pods: list[tuple[str, dict[str, str], dict[str, int], bool]]) -> set[tuple[str, int, int]]:
    """(pod, Service port, pod port) for each address Kubernetes' EndpointSlice controller publishes.

    ``pods``: (name, labels, named container ports, ready). A pod is selected when it carries every
    selector label; it is an address only while ready (unless publishNotReadyAddresses); a named
    targetPort resolves to the pod's container port of that name, and a pod without one gets no
    address for that port.
    """
    out = set()
    for name, labels, ports, ready in pods:
        if not all(labels.get(k) == v for k, v in spec["selector"].items()):
            continue
        if not ready and not spec.get("publishNotReadyAddresses"):
            continue
        for port in spec["ports"]:
            target = port.get("targetPort", port["port"])
            if isinstance(target, str):
                if target not in ports:
                    continue
                target = ports[target]
            out.add((name, port["port"], target))
    return out


def check_ingress(objs: list[dict[str, Any]]) -> None:
    """Every GPU worker pod serves through its own ingress; a pod is an endpoint only while the
    ingress answers its readiness probe; the head (no GPU, no replica, no ingress) never is.

    Default ingress: rayscale's HAProxy on 8000 (HTTP) and 8001 (gRPC) of each worker, behind
    rayscale-ingress and KubeRay's Serve Service. ``proxy``: Serve's proxy on 8000, behind KubeRay's.
    """
    rs = _find(objs, "RayService")
    cfg = parse_app_args(serve_app(rs)["args"])
    direct = cfg.ingress == "direct"
    head, worker = _head_and_workers(rs)
    head_ports, worker_ports = _container_ports(head), _container_ports(worker)
    worker_container = worker["spec"]["containers"][0]
    # Every replica process on a worker reserves cpus_per_replica; auto is 4 processes per GPU.
    per_gpu = math.floor(1 / cfg.gpus_per_replica + 1e-9) * cfg.resolved().processes_per_replica
    assert float(worker_container["resources"]["requests"]["cpu"]) >= per_gpu * cfg.cpus_per_replica + 1

    # The worker declares its ingress's ports under KubeRay's names; the head declares none.
    assert worker_ports["serve"] == 8000 and worker_ports.get("serve-grpc") == (8001 if direct else None)
    assert not {"serve", "serve-grpc"} & set(head_ports) and 8000 not in head_ports.values()
    assert rs["spec"]["excludeHeadPodFromServeSvc"] is True
    assert head["spec"]["containers"][0]["resources"]["limits"]["cpu"] == "4"  # no request crosses the head

    # Readiness is the ingress's own health answer, and a failing ingress leaves within seconds.
    probe = worker_container["readinessProbe"]
    target = probe["httpGet"]["port"]
    assert probe["httpGet"]["path"] == "/-/healthz"
    assert (worker_ports[target] if isinstance(target, str) else target) == 8000
    assert probe["periodSeconds"] * probe["failureThreshold"] <= 10 and probe["successThreshold"] == 1

    job = _find(objs, "RayJob")["spec"]["rayClusterSpec"]
    triton = _find(objs, "Deployment", "triton")["spec"]["template"]
    pods = [
        ("head", _kuberay_pod_labels(head, "head"), head_ports, True),
        # Left out by its ray.io/serve label alone, even with an ingress's ports (a head given GPUs).
        ("excluded-head-with-ports", _kuberay_pod_labels(head, "head"), worker_ports, True),
        ("worker-ready", _kuberay_pod_labels(worker, "worker"), worker_ports, True),
        ("worker-not-ready", _kuberay_pod_labels(worker, "worker"), worker_ports, False),
        ("old-cluster-worker", _kuberay_pod_labels(worker, "worker", cluster="rayscale-old42"), worker_ports, True),
        (
            "bench-head",
            _kuberay_pod_labels(job["headGroupSpec"]["template"], "head", "RayJob"),
            _container_ports(job["headGroupSpec"]["template"]),
            True,
        ),
        ("bench-loadgen", _kuberay_pod_labels(job["workerGroupSpecs"][0]["template"], "worker", "RayJob"), {}, True),
        ("triton", triton["metadata"]["labels"], _container_ports(triton), True),
        (
            "another-rayservice-worker",
            _kuberay_pod_labels({"metadata": {"labels": {"app.kubernetes.io/name": "other"}}}, "worker", cluster="other-q9z4w"),
            worker_ports,
            True,
        ),
    ]
    # KubeRay's Serve Service: its ports as we give them, its selector set by KubeRay to the active cluster.
    kuberay_svc = dict(rs["spec"]["serveService"]["spec"], selector={"ray.io/cluster": CLUSTER, "ray.io/serve": "true"})
    http_grpc = {8000: 8000, 8001: 8001} if direct else {8000: 8000}
    assert _endpoints(kuberay_svc, pods) == {("worker-ready", port, target) for port, target in http_grpc.items()}

    services = [o for o in objs if o["kind"] == "Service"]
    if not direct:
        assert "rayscale-ingress" not in [s["metadata"]["name"] for s in services]
        return
    svc = _find(objs, "Service", "rayscale-ingress")["spec"]
    assert svc["type"] == "ClusterIP"
    # Every ready serving pod of the RayService, old cluster included during an upgrade, and nothing else.
    assert _endpoints(svc, pods) == {
        (pod, port, target) for pod in ("worker-ready", "old-cluster-worker") for port, target in http_grpc.items()
    }
    (grpc,) = [p for p in svc["ports"] if p["port"] == 8001]
    assert grpc["appProtocol"] == "kubernetes.io/h2c"


def check_all(objs: list[dict[str, Any]], replicas: int, gpus_per_replica: float = 1.0) -> None:
    for obj in objs:
        validate(obj)
    check_sizes(objs, replicas, gpus_per_replica)
    check_serve_config(_find(objs, "RayService"))
    check_ingress(objs)
    check_volumes_and_exposure(objs)
    check_monitors(objs, [o for o in objs if o["kind"] in ("PodMonitor", "ServiceMonitor")])


# ------------------------------------------------------------------------------ the tests


def test_crds_are_the_ones_kuberay_publishes():
    shared = Path("/work/shared/k8s-crds")
    for name in ("ray.io_rayservices.yaml", "ray.io_rayjobs.yaml", "ray.io_rayclusters.yaml", "SOURCE.md"):
        assert (CRDS / name).is_file(), f"{CRDS / name} is missing"
        if (shared / name).is_file():
            assert (CRDS / name).read_bytes() == (shared / name).read_bytes()


def test_validation_rejects_what_the_api_server_rejects():
    objs = k8s.render_manifests(replicas=2)
    rs = copy.deepcopy(_find(objs, "RayService"))
    rs["spec"]["rayClusterConfig"]["workerGroupSpecs"][0]["minReplica"] = 1  # typo
    with pytest.raises(AssertionError, match="minReplica"):
        validate(rs)
    rs = copy.deepcopy(_find(objs, "RayService"))
    del rs["spec"]["rayClusterConfig"]["workerGroupSpecs"][0]["groupName"]
    with pytest.raises(AssertionError, match="groupName"):
        validate(rs)
    job = copy.deepcopy(_find(objs, "RayJob"))
    job["spec"]["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]["containers"][0]["ports"][0]["containerPort"] = "x"
    with pytest.raises(AssertionError, match="containerPort"):
        validate(job)
    deploy = copy.deepcopy(_find(objs, "Deployment", "triton"))
    deploy["spec"]["template"]["spec"]["containers"][0]["resource"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        validate(deploy)
    quantity = copy.deepcopy(_find(objs, "RayService"))
    quantity["spec"]["rayClusterConfig"]["workerGroupSpecs"][0]["template"]["spec"]["containers"][0]["resources"]["limits"][
        "cpu"
    ] = 8
    validate(quantity)  # int-or-string: 8 and "8" are both quantities


@pytest.mark.parametrize("replicas", SIZES)
def test_rendered_manifests_validate_at_every_size(replicas):
    check_all(k8s.render_manifests(replicas=replicas), replicas)


@pytest.mark.parametrize(("replicas", "gpus_per_replica", "workers"), [(4, 0.5, 2), (3, 0.5, 2), (5, 0.4, 3), (8, 0.25, 2)])
def test_fractional_gpus_pack_replicas_onto_fewer_workers(replicas, gpus_per_replica, workers):
    assert k8s.gpu_workers_for(replicas, gpus_per_replica) == workers
    objs = k8s.render_manifests(replicas=replicas, gpus_per_replica=gpus_per_replica)
    check_all(objs, replicas, gpus_per_replica)


def test_serve_settings_carry_over_but_pod_paths_win():
    serve = ServeConfig(max_batch_size=128, batch_wait_ms=5.0, model_dir="elsewhere", host="127.0.0.1", replicas=9)
    args = serve_app(_find(k8s.render_manifests(replicas=2, serve=serve), "RayService"))["args"]
    assert (args["max_batch_size"], args["batch_wait_ms"], args["replicas"]) == (128, 5.0, 2)
    assert (args["model_dir"], args["host"], args["provider"]) == ("/models/openclip_vit_b32", "0.0.0.0", "cuda")


def test_default_ingress_is_haproxy_on_every_gpu_worker_behind_one_service():
    objs = k8s.render_manifests(replicas=4)
    args = serve_app(_find(objs, "RayService"))["args"]
    assert parse_app_args(args).ingress == "direct" and args["processes_per_replica"] == 0  # auto
    svc = _find(objs, "Service", "rayscale-ingress")
    assert svc["spec"]["selector"]["ray.io/serve"] == "true" and "ray.io/node-type" not in svc["spec"]["selector"]
    assert sorted(p["port"] for p in svc["spec"]["ports"]) == [8000, 8001]
    assert "--url http://rayscale-ingress:8000 " in _find(objs, "RayJob")["spec"]["entrypoint"]
    assert not any(8265 in [p["port"] for p in o["spec"]["ports"]] for o in objs if o["kind"] == "Service")
    # Each GPU worker carries its own requests: the head stays small whatever the size.
    for replicas in SIZES:
        head, worker = _head_and_workers(_find(k8s.render_manifests(replicas=replicas), "RayService"))
        assert head["spec"]["containers"][0]["resources"]["limits"]["cpu"] == "4"
        assert worker["spec"]["containers"][0]["resources"]["limits"]["cpu"] == "8"
    check_all(objs, 4)


def test_bench_target_is_one_place():
    """The sweep's target is one argument group, so another way of aiming the clients replaces it alone."""
    from rayscale.k8s.bench_job import bench_entrypoint, bench_target

    assert bench_target("http://rayscale-ingress:8000") == "--url http://rayscale-ingress:8000"
    entry = bench_entrypoint(2, 2, "http://triton:8000")
    assert entry.startswith("rayscale bench --url http://triton:8000 --replicas 2 ")


@pytest.mark.parametrize("replicas", [1, 3])
def test_serve_proxy_ingress_still_renders(replicas):
    objs = k8s.render_manifests(replicas=replicas, serve=ServeConfig(ingress="proxy"))
    rs = _find(objs, "RayService")
    assert rs["spec"]["excludeHeadPodFromServeSvc"] is True
    assert "--url http://rayscale-serve-svc:8000 " in _find(objs, "RayJob")["spec"]["entrypoint"]
    check_all(objs, replicas)


@pytest.mark.parametrize(
    ("serve", "gpus_per_replica", "cpus"),
    [
        (ServeConfig(), 1.0, 8),  # auto: 4 processes × 1 CPU + 4
        (ServeConfig(processes_per_replica=2, cpus_per_replica=2.0), 1.0, 8),
        (ServeConfig(processes_per_replica=8, cpus_per_replica=1.5), 1.0, 16),
        (ServeConfig(), 0.5, 8),  # auto: 2 replicas × 2 processes
        (ServeConfig(processes_per_replica=1, ingress="proxy"), 1.0, 5),
    ],
)
def test_worker_cpus_follow_the_replica_processes(serve, gpus_per_replica, cpus):
    objs = k8s.render_manifests(replicas=2, gpus_per_replica=gpus_per_replica, serve=serve)
    _, worker = _head_and_workers(_find(objs, "RayService"))
    assert worker["spec"]["containers"][0]["resources"]["limits"]["cpu"] == str(cpus)
    triton = _find(objs, "Deployment", "triton")["spec"]["template"]["spec"]["containers"][0]
    workers = k8s.gpu_workers_for(2, gpus_per_replica)
    assert triton["resources"]["limits"]["cpu"] == str(cpus * workers)  # like for like per GPU
    check_all(objs, 2, gpus_per_replica)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"replicas": 0}, "replicas must be an integer ≥ 1, got 0"),
        ({"replicas": 2, "gpus_per_replica": 0}, r"gpus_per_replica must be in \(0, 1\]"),
        ({"replicas": 2, "gpus_per_replica": 2}, r"gpus_per_replica must be in \(0, 1\]"),
        ({"replicas": 1, "namespace": "Ray_Scale"}, "namespace must be a DNS label"),
        ({"replicas": 1, "image": ""}, "image must be an image reference"),
        ({"replicas": 1, "serve": ServeConfig(api_token="s3cret")}, "api_token would be stored in plain text"),
        ({"replicas": 1, "serve": ServeConfig(ingress="haproxy")}, "ingress must be one of direct, proxy on Kubernetes"),
    ],
)
def test_bad_input_is_a_one_line_config_error(kwargs, match):
    with pytest.raises(ConfigError, match=match) as info:
        k8s.render_manifests(**kwargs)
    assert "\n" not in str(info.value)


def test_namespace_and_image_reach_every_object():
    objs = k8s.render_manifests(replicas=1, namespace="gpu-bench", image="registry.example.com/rayscale:1.2")
    for obj in objs:
        if obj["kind"] == "Namespace":
            assert obj["metadata"]["name"] == "gpu-bench"
        else:
            assert obj["metadata"]["namespace"] == "gpu-bench"
        for c in _containers(obj):
            assert c["image"] in ("registry.example.com/rayscale:1.2", k8s.TRITON_IMAGE)
    check_all(objs, 1)


def test_kustomizations_reference_files_that_exist():
    kusts = sorted(K8S.rglob("kustomization.yaml"))
    assert {p.parent.relative_to(K8S).as_posix() for p in kusts} >= {"base", "monitoring", *(f"overlays/{n}gpu" for n in SIZES)}
    for path in kusts:
        kust = yaml.safe_load(path.read_text())
        refs = list(kust.get("resources", [])) + [p["path"] for p in kust.get("patches", [])]
        refs += [f.partition("=")[2] or f for g in kust.get("configMapGenerator", []) for f in g["files"]]
        for ref in refs:
            assert (path.parent / ref).exists(), f"{path} references missing {ref}"


@pytest.mark.parametrize("replicas", SIZES)
def test_each_overlay_is_the_rendered_size_and_validates(replicas):
    built = kustomize_build(K8S / "overlays" / f"{replicas}gpu")
    check_all(built + kustomize_build(K8S / "monitoring"), replicas)
    assert _normalised(built) == _normalised(_core(k8s.render_manifests(replicas=replicas)))


def test_monitoring_kustomization_is_the_rendered_monitoring():
    built = _normalised(kustomize_build(K8S / "monitoring"))
    rendered = _normalised([o for o in k8s.render_manifests(replicas=1) if k8s.is_monitoring(o)])
    dashboard = ("ConfigMap", "rayscale-grafana-dashboard")
    assert built[dashboard]["metadata"]["labels"] == {"grafana_dashboard": "1"}
    json.loads(built[dashboard]["data"]["rayscale.json"])
    if dashboard in rendered:  # compared in test_dashboard_copy_is_current
        built[dashboard]["data"] = rendered[dashboard]["data"]
    else:
        del built[dashboard]
    for obj in built.values():
        obj["metadata"]["namespace"] = "rayscale"
    assert built == rendered


def test_dashboard_copy_is_current():
    source = ROOT / "rayscale" / "dashboards" / "rayscale.json"
    if not source.is_file():
        pytest.skip(f"{source} does not exist yet: nothing to compare k8s/monitoring/{k8s.DASHBOARD_FILE} with")
    copy_ = K8S / "monitoring" / k8s.DASHBOARD_FILE
    assert copy_.read_text() == source.read_text(), (
        f"{copy_} is stale: cp rayscale/dashboards/rayscale.json k8s/monitoring/{k8s.DASHBOARD_FILE}"
    )


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl (with its built-in kustomize) is not installed")
@pytest.mark.parametrize("directory", ["base", "monitoring", *(f"overlays/{n}gpu" for n in SIZES)])
def test_python_build_equals_kubectl_kustomize(directory):
    assert _normalised(kubectl_build(K8S / directory)) == _normalised(kustomize_build(K8S / directory))


def test_render_cli_writes_a_kustomization_that_builds(tmp_path):
    out = tmp_path / "k8s-4gpu"
    result = CliRunner().invoke(k8s_app, ["render", "--replicas", "4", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "4 Serve replicas on 4 GPU workers, Triton on 4 GPUs" in result.output
    assert "clients in the cluster: http://rayscale-ingress:8000 (gRPC rayscale-ingress:8001)" in result.output
    built = kustomize_build(out)
    check_all(built + kustomize_build(out / "monitoring"), 4)
    assert _normalised(built) == _normalised(_core(k8s.render_manifests(replicas=4)))
    source = ROOT / "rayscale" / "dashboards" / "rayscale.json"
    if source.is_file():  # a fresh copy of the packaged dashboard, not the one under k8s/
        assert (out / "monitoring" / k8s.DASHBOARD_FILE).read_text() == source.read_text()
    if shutil.which("kubectl"):
        assert _normalised(kubectl_build(out)) == _normalised(built)


def test_render_cli_ingress_proxy_and_a_bad_ingress(tmp_path):
    result = CliRunner().invoke(k8s_app, ["render", "--replicas", "2", "--ingress", "proxy", "--out", str(tmp_path / "p")])
    assert result.exit_code == 0, result.output
    assert "clients in the cluster: http://rayscale-serve-svc:8000" in result.output
    built = kustomize_build(tmp_path / "p")
    assert parse_app_args(serve_app(_find(built, "RayService"))["args"]).ingress == "proxy"
    check_all(built + kustomize_build(tmp_path / "p" / "monitoring"), 2)
    bad = CliRunner().invoke(k8s_app, ["render", "--replicas", "2", "--ingress", "haproxy", "--out", str(tmp_path / "h")])
    assert bad.exit_code != 0 and "--ingress must be one of direct, proxy, got 'haproxy'" in str(bad.exception)
    assert not (tmp_path / "h").exists()


def test_render_refuses_an_unwritable_directory(tmp_path):
    if os.geteuid() == 0:
        target = Path("/proc/rayscale-k8s")  # not writable even for root
    else:
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o500)
        target = locked / "out"
    with pytest.raises(ConfigError, match="choose a writable --out directory"):
        k8s.write_manifests(target, replicas=1)


def test_exporter_keeper_joins_the_local_ray_node_and_serves_metrics(port):
    """What the head pod's postStart hook runs: an exporter per node, scrapeable on the pod IP."""
    import urllib.request

    ray = pytest.importorskip("ray")
    from rayscale.metrics import stop_node_exporters

    start_local_ray(num_cpus=1, log_to_driver=False)
    try:
        assert k8s.keep_node_exporters(port=port, rounds=2, interval_s=0.1) == 1  # one node; the second round reuses it
        body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
        assert "rayscale_" in body
        assert stop_node_exporters() == 1
    finally:
        ray.shutdown()
