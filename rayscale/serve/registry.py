"""The app's control plane, kept in Ray's GCS key-value store: what every process reads and no actor answers.

Nothing here sits on a request's path, and no actor's death or restart changes it:

* the **ingress secret**, made once per app: every node's HAProxy adds it to what it forwards and
  every replica process checks it, so a restarted ingress or statistics actor keeps the same one;
* the **draining flag**: ``rayscale down`` sets it; each replica process watches it and answers
  readiness from its own copy, so a readiness probe never waits on another process;
* one **replica record** per replica process (its node, GPU, config, and where its own servers
  listen): the ingresses route from them, ``up``/``status``/``bench`` read them;
* one **ingress record** per node ingress (where it listens): load generators aim at them.

Ray's GCS is the cluster's own control plane (only token-authenticated members of the cluster read
it); with GCS fault tolerance it survives a head restart too.
"""

from __future__ import annotations

import json
import secrets
from dataclasses import asdict, dataclass, field, fields
from typing import Any

__all__ = [
    "IngressRecord",
    "ReplicaRecord",
    "clear",
    "forget_ingress",
    "forget_replica",
    "ingress_records",
    "ingress_secret",
    "is_draining",
    "put_ingress",
    "put_replica",
    "replica_records",
    "set_draining",
]

NAMESPACE = "rayscale"


@dataclass(frozen=True)
class ReplicaRecord:
    """One replica process, as it describes itself once its servers listen."""

    replica: str  # Serve's replica id
    node: str  # Ray node id
    pid: int
    actor_name: str | None = None
    actor_namespace: str = "serve"
    node_ip: str = ""
    hostname: str = ""
    gpu_ids: list[str] = field(default_factory=list)
    provider: str = ""
    backend: str = ""  # onnxruntime | torch
    model_sha256: str = ""
    precision: str = ""
    auth: bool = False
    host: str | None = None  # where its own servers listen (ingress "direct")
    http_port: int | None = None
    grpc_port: int | None = None
    config: dict[str, Any] = field(default_factory=dict)  # ServeConfig.to_dict(): no token

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ReplicaRecord:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


@dataclass(frozen=True)
class IngressRecord:
    """One node's ingress: where it listens, and the address a client on that node uses."""

    node: str  # Ray node id
    node_ip: str
    bind_host: str
    http_port: int
    grpc_port: int  # 0: no gRPC
    pid: int | None = None  # HAProxy's
    url: str = ""  # for a client on this node
    grpc_target: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> IngressRecord:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


def _kv():
    import ray.experimental.internal_kv as kv

    return kv


def _key(app_name: str, *parts: str) -> str:
    return "/".join([app_name, *parts])


def ingress_secret(app_name: str) -> str:
    """The app's ingress secret, made by whichever process asks first (a put that never overwrites)."""
    kv = _kv()
    key = _key(app_name, "ingress-secret")
    kv._internal_kv_put(key, secrets.token_urlsafe(32), overwrite=False, namespace=NAMESPACE)
    return kv._internal_kv_get(key, namespace=NAMESPACE).decode()


def set_draining(app_name: str, draining: bool = True) -> None:
    _kv()._internal_kv_put(_key(app_name, "draining"), b"1" if draining else b"0", namespace=NAMESPACE)


def is_draining(app_name: str) -> bool:
    return _kv()._internal_kv_get(_key(app_name, "draining"), namespace=NAMESPACE) == b"1"


def put_replica(app_name: str, record: ReplicaRecord) -> None:
    _kv()._internal_kv_put(_key(app_name, "replica", record.replica), json.dumps(record.to_dict()), namespace=NAMESPACE)


def forget_replica(app_name: str, replica: str) -> None:
    _kv()._internal_kv_del(_key(app_name, "replica", replica), namespace=NAMESPACE)


def replica_records(app_name: str, *, live_only: bool = False) -> list[ReplicaRecord]:
    """Every registered replica process, in replica-id order; with ``live_only``, records of processes
    whose actor is gone (crashed, killed) are dropped from the store first."""
    records = [ReplicaRecord.from_dict(d) for d in _records(_key(app_name, "replica", ""))]
    if live_only:
        alive = [r for r in records if _actor_alive(r)]
        for r in records:
            if r not in alive:
                forget_replica(app_name, r.replica)
        records = alive
    return sorted(records, key=lambda r: r.replica)


def put_ingress(app_name: str, record: IngressRecord) -> None:
    _kv()._internal_kv_put(_key(app_name, "ingress", record.node), json.dumps(record.to_dict()), namespace=NAMESPACE)


def forget_ingress(app_name: str, node: str) -> None:
    _kv()._internal_kv_del(_key(app_name, "ingress", node), namespace=NAMESPACE)


def ingress_records(app_name: str) -> list[IngressRecord]:
    """Every node ingress the app started, in node order."""
    return sorted((IngressRecord.from_dict(d) for d in _records(_key(app_name, "ingress", ""))), key=lambda r: r.node)


def clear(app_name: str) -> None:
    """Forget everything the app kept (``rayscale down``): a new deployment starts with a new secret."""
    _kv()._internal_kv_del(_key(app_name, ""), del_by_prefix=True, namespace=NAMESPACE)


def _records(prefix: str) -> list[dict[str, Any]]:
    kv = _kv()
    keys = kv._internal_kv_list(prefix, namespace=NAMESPACE)
    if not keys:
        return []
    values = kv.global_gcs_client.internal_kv_multi_get(keys, NAMESPACE.encode(), timeout=10)
    out = []
    for value in values.values():
        try:
            out.append(json.loads(value))
        except (TypeError, ValueError):  # a record written by a newer or broken process: not ours to route to
            continue
    return out


def _actor_alive(record: ReplicaRecord) -> bool:
    import ray

    if not record.actor_name:
        return True
    try:
        ray.get_actor(record.actor_name, namespace=record.actor_namespace)
        return True
    except ValueError:
        return False
