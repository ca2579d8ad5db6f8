"""The Serve application in the pod: its ServeConfig there and the RayService's ``serveConfigV2``."""

from __future__ import annotations

import dataclasses
from typing import Any

from rayscale.config import ServeConfig
from rayscale.errors import ConfigError
from rayscale.k8s.blocks import GRPC_PORT, MODEL_DIR_IN_POD, SERVE_PORT
from rayscale.k8s.yaml_text import dump_yaml

__all__ = ["K8S_INGRESSES", "SERVE_APP_IMPORT_PATH", "pod_serve_config", "proxy_env_vars", "serve_config_v2"]

SERVE_APP_IMPORT_PATH = "rayscale.serve.app:build_app"

# Ingresses the manifests run: "direct" (rayscale's HAProxy on every GPU worker, the default) or
# "proxy" (Serve's proxy on every worker). Serve's own HAProxy mode ("haproxy") is not offered here.
K8S_INGRESSES = ("direct", "proxy")


def pod_serve_config(serve: ServeConfig | None, replicas: int, gpus_per_replica: float) -> ServeConfig:
    """``serve`` (or the defaults) as it runs in the pod, checked for what Kubernetes cannot take."""
    serve = serve or ServeConfig()
    if serve.api_token:
        raise ConfigError(
            "api_token would be stored in plain text in the RayService: leave it unset "
            "(the Services are ClusterIP, reachable only inside the cluster)"
        )
    if serve.ingress not in K8S_INGRESSES:
        raise ConfigError(f"ingress must be one of {', '.join(K8S_INGRESSES)} on Kubernetes, got {serve.ingress!r}")
    # In the pod: the model volume's path, CUDA or a loud failure (never a silent CPU fallback), and
    # 0.0.0.0 because a ClusterIP Service fronts each GPU worker's ingress (rayscale's HAProxy, or
    # Serve's proxy) and the kubelet probes it on the pod IP: the pod network is the boundary.
    return dataclasses.replace(
        serve,
        model_dir=MODEL_DIR_IN_POD,
        replicas=replicas,
        gpus_per_replica=float(gpus_per_replica),
        host="0.0.0.0",
        port=SERVE_PORT,
        grpc_port=GRPC_PORT,
        provider="cuda",
    )


def proxy_env_vars() -> dict[str, str]:
    from rayscale.serve.app import proxy_env_vars as serve_proxy_env_vars

    return serve_proxy_env_vars()


def serve_config_v2(serve: ServeConfig) -> str:
    """The RayService's ``serveConfigV2``: a Serve config file (YAML; JSON is valid YAML)."""
    if serve.ingress == "direct":
        # No Serve proxy: each replica starts its own node's rayscale HAProxy (once per node),
        # listening on host:port and host:grpc_port, so Serve must leave port 8000 free there.
        head: dict[str, Any] = {"proxy_location": "Disabled"}
    else:
        head = {
            "proxy_location": "EveryNode",
            "http_options": {"host": serve.host, "port": serve.port},
            # Serve's proxy answers its own errors (queue full, timeout, dead replica) in the protocol's JSON.
            "controller_options": {"runtime_env": {"env_vars": proxy_env_vars()}},
        }
    config = {
        **head,
        "applications": [
            {
                "name": serve.app_name,
                "route_prefix": serve.route_prefix,
                "import_path": SERVE_APP_IMPORT_PATH,
                "args": serve.to_dict(),
            }
        ],
    }
    return dump_yaml(config)
