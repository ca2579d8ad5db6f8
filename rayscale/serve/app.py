"""The Ray Serve application: one deployment of replica processes, each holding a share of a GPU.

``build_app(args)`` is the application builder that `serve run`, `rayscale up`, the config in
``deployments/`` and KubeRay's ``serveConfigV2`` all use; ``args`` are ``ServeConfig`` fields
(strings where a config file gives strings). ``app_for(cfg)`` builds the same from a typed config.
The replica itself is ``rayscale.serve.replica.OpenClipEncoder``; the code that runs inside
Serve's proxies is in ``rayscale.serve.proxy``; the default ingress in ``rayscale.serve.ingress``.
"""

from __future__ import annotations

from typing import Any

from rayscale.config import ServeConfig
from rayscale.errors import ConfigError
from rayscale.serve.model_config import DEPLOYMENT_NAME, triton_model_config
from rayscale.serve.proxy import PROXY_CALLBACK, PROXY_CALLBACK_ENV, proxy_env_vars, proxy_middlewares, serve_env_vars
from rayscale.serve.replica import FAIL_HEALTH_ENV, RECONFIGURABLE, OpenClipEncoder

__all__ = [
    "DEPLOYMENT_NAME",
    "FAIL_HEALTH_ENV",
    "PROXY_CALLBACK",
    "PROXY_CALLBACK_ENV",
    "OpenClipEncoder",
    "RECONFIGURABLE",
    "app_for",
    "build_app",
    "deployment_options",
    "parse_app_args",
    "proxy_env_vars",
    "proxy_middlewares",
    "serve_env_vars",
    "triton_model_config",
]


def deployment_options(cfg: ServeConfig) -> dict[str, Any]:
    """Serve's options for ``cfg`` (already ``resolved()``): one Serve replica per process."""
    from rayscale.serve.proxy import HAPROXY_ENV

    return {
        "name": DEPLOYMENT_NAME,
        "num_replicas": cfg.serve_replicas,
        "ray_actor_options": {"num_gpus": cfg.gpus_per_process, "num_cpus": cfg.cpus_per_replica}
        | ({"runtime_env": {"env_vars": HAPROXY_ENV}} if cfg.ingress == "haproxy" else {}),
        "max_ongoing_requests": cfg.max_ongoing_requests,
        "user_config": {name: getattr(cfg, name) for name in RECONFIGURABLE},  # changes without new processes
        # The replica enforces max_queued_requests with the protocol's 503; Serve's own limit (whose
        # rejections the proxy middleware rewrites) only guards against a runaway queue in the router,
        # which also holds requests for a moment while it picks a replica.
        "max_queued_requests": _serve_queue_limit(cfg),
        "graceful_shutdown_timeout_s": max(cfg.request_timeout_s, 5.0) + 2.0,
        "graceful_shutdown_wait_loop_s": 0.5,
        "health_check_period_s": 5.0,
        "health_check_timeout_s": 30.0,
        # A log line per request costs the replica CPU on the hot path; errors are still logged.
        "logging_config": {"enable_access_log": False, "log_level": "WARNING"},
    }


def _serve_queue_limit(cfg: ServeConfig) -> int:
    if cfg.max_queued_requests < 0:
        return -1
    return max(4 * cfg.max_queued_requests * cfg.serve_replicas, 1024)


def parse_app_args(args: dict[str, Any] | None) -> ServeConfig:
    """A ServeConfig from application arguments, which config files and CLIs give as strings."""
    args = dict(args or {})
    known = set(ServeConfig.__dataclass_fields__)
    unknown = sorted(set(args) - known)
    if unknown:
        raise ConfigError(f"unknown application argument(s) {', '.join(unknown)}: valid ones are {', '.join(sorted(known))}")
    for key, field_ in ServeConfig.__dataclass_fields__.items():
        if key in args and isinstance(args[key], str) and field_.type in ("int", "float"):
            try:
                args[key] = int(args[key]) if field_.type == "int" else float(args[key])
            except ValueError:
                raise ConfigError(f"application argument {key} must be a number, got {args[key]!r}") from None
    return ServeConfig(**args)


def app_for(cfg: ServeConfig, *, version: str | None = None):
    """The Serve application for a typed config; the config travels to each replica as itself.

    Serve starts new processes for a redeploy whose version differs (without one, every deploy gets a
    fresh version, as ``serve.run`` gives it). Deployed again with the same ``version``, a config that
    differs only in ``RECONFIGURABLE`` fields reconfigures the running processes instead; the caller
    keeps every other field equal.
    """
    from ray import serve

    cfg = cfg.resolved()
    deployment = serve.deployment(OpenClipEncoder, **deployment_options(cfg))
    if version is not None:
        deployment = deployment.options(version=version, _internal=True)  # Serve's own way to pin one
    return deployment.bind(cfg)


def build_app(args: dict[str, Any] | None = None):
    """Application builder: ``serve run rayscale.serve.app:build_app model_dir=... replicas=2``."""
    return app_for(parse_app_args(args))
