"""The default ingress on its own: one node's HAProxy as rayscale configures it, with no replica behind it yet."""

from __future__ import annotations

import json
import os
import socket
import stat
import urllib.error
import urllib.request

import pytest

from rayscale.config import ServeConfig
from rayscale.serve.ingress import (
    INGRESS_TOKEN_HEADER,
    IngressConfig,
    ensure_node_ingress,
    get_node_ingress,
    ingress_config,
    render_config,
    stop_ingresses,
)

from conftest import free_port, start_local_ray

pytestmark = pytest.mark.timeout(300)


@pytest.fixture(scope="module")
def ingress(tmp_path_factory):
    import ray

    start_local_ray(num_cpus=2, namespace="rayscale")
    cfg = IngressConfig(
        app_name=f"ingress-{os.getpid()}", host="127.0.0.1", http_port=free_port(), grpc_port=free_port(), request_timeout_s=10
    )
    actor = ensure_node_ingress(cfg)
    yield cfg, actor
    stop_ingresses(cfg.app_name)
    ray.shutdown()


def _get(url: str) -> tuple[int, dict, dict]:
    try:
        with urllib.request.urlopen(url, timeout=10) as resp:
            return resp.status, dict(resp.headers), json.loads(resp.read())
    except urllib.error.HTTPError as e:
        return e.code, {k.lower(): v for k, v in e.headers.items()}, json.loads(e.read())


def test_with_no_replica_ready_the_ingress_answers_a_json_503_with_retry_after(ingress):
    cfg, _ = ingress
    status, headers, body = _get(f"http://127.0.0.1:{cfg.http_port}/v2/health/ready")
    assert status == 503
    assert headers["retry-after"] == "1"
    assert "no replica" in body["error"]


def test_malformed_http_gets_a_400_and_the_ingress_keeps_serving(ingress):
    """HAProxy answers framing errors itself (in its own text form, the one answer that is not JSON)."""
    cfg, _ = ingress
    with socket.create_connection(("127.0.0.1", cfg.http_port), timeout=10) as s:
        s.sendall(b"NOT HTTP AT ALL\r\n\r\n")
        chunks = []
        while chunk := s.recv(65536):  # the ingress closes after its error page
            chunks.append(chunk)
        reply = b"".join(chunks).decode(errors="replace")
    assert reply.startswith("HTTP/1.1 400")
    assert _get(f"http://127.0.0.1:{cfg.http_port}/v2/health/ready")[0] == 503  # still answering


def test_the_ingress_listens_only_on_its_two_ports_and_its_admin_socket_is_private(ingress):
    import psutil
    import ray

    cfg, actor = ingress
    state = ray.get(actor.state.remote())
    proc = psutil.Process(state.pid)
    listening = {(c.laddr.ip, c.laddr.port) for c in proc.net_connections(kind="inet") if c.status == psutil.CONN_LISTEN}
    assert listening == {("127.0.0.1", cfg.http_port), ("127.0.0.1", cfg.grpc_port)}
    sockets = [c.laddr for c in proc.net_connections(kind="unix") if c.laddr]
    assert sockets, "the admin socket is a Unix socket"
    for path in sockets:  # HAProxy binds a temporary name, then renames it admin.sock
        folder = os.path.dirname(path)
        assert stat.S_IMODE(os.stat(folder).st_mode) == 0o700, folder
        assert stat.S_IMODE(os.stat(os.path.join(folder, "admin.sock")).st_mode) == 0o600


def test_a_port_in_use_is_a_clear_error(ingress):
    cfg, _ = ingress
    clash = IngressConfig(
        app_name=f"clash-{os.getpid()}", host="127.0.0.1", http_port=cfg.http_port, grpc_port=0, request_timeout_s=10
    )
    with pytest.raises(Exception, match="port"):
        ensure_node_ingress(clash)
    import ray

    assert get_node_ingress(clash.app_name, ray.get_runtime_context().get_node_id()) is None


def test_the_config_adds_the_ingress_token_and_strips_a_client_copy(tmp_path):
    text = render_config(ingress_config(ServeConfig(port=8000, grpc_port=8001)), token="T0KEN", workdir=tmp_path)
    assert f"http-request del-header {INGRESS_TOKEN_HEADER}" in text
    assert (
        text.count(f"http-request set-header {INGRESS_TOKEN_HEADER} T0KEN") == 4
    )  # every pool: HTTP and gRPC, here and elsewhere
    assert "bind 127.0.0.1:8000" in text and "bind 127.0.0.1:8001 proto h2" in text
    assert "stats socket" in text and "mode 600" in text
    assert "stats enable" not in text and "prometheus" not in text  # no statistics page, no metrics port


def test_each_node_binds_its_own_address_for_the_users_host():
    from rayscale.config import node_bind_host

    assert node_bind_host("127.0.0.1", "10.0.0.5") == "127.0.0.1"  # a node of a real cluster: its loopback
    assert node_bind_host("127.0.0.1", "127.0.0.2") == "127.0.0.2"  # nodes sharing a machine: one loopback address each
    assert node_bind_host("0.0.0.0", "10.0.0.5") == "0.0.0.0"
    assert node_bind_host("10.0.0.1", "10.0.0.5") == "10.0.0.5"  # "the node's own address", on every node
    assert node_bind_host("192.168.1.7", "127.0.0.1") == "192.168.1.7"  # one machine: the user's address


def test_healthz_follows_whether_any_replica_is_routed(ingress):
    """KubeRay probes /-/healthz: 503 JSON while no replica is ready."""
    cfg, _ = ingress
    status, _, body = _get(f"http://127.0.0.1:{cfg.http_port}/-/healthz")
    assert status == 503 and "no replica" in body["error"]
