"""The server a search measures: started once, then given each candidate's settings as cheaply as they allow.

* rayscale: settings that differ only in ``batches_in_flight`` and ``batch_wait_ms`` are applied
  to the running processes (``rayscale.serve.scaling.reconfigure``, Serve's user_config, about a
  second); other changes stop the app and deploy it again (the Ray cluster stays up).
* Triton: the server runs with explicit model control and every change reloads the model
  (``rayscale.triton.server.triton_reload``): on a 2-core CPU 4–5 s against 7–9 s for a stop and
  a start, whose exit alone takes 3–4 s. ``TuneConfig.triton_reload=False`` restarts instead.

The search plans its budget from what each kind of switch has cost so far (``expected_s``).
"""

from __future__ import annotations

import tempfile
import time
import uuid

from rayscale.config import LOCAL_HOST
from rayscale.errors import ServerError
from rayscale.tune.config import TuneConfig
from rayscale.tune.space import RayscaleSettings, Settings, TritonSettings

__all__ = ["SWITCHES", "CandidateServer"]

SWITCHES = ("started", "in place", "reloaded", "restarted", "reused")
# Seconds each switch is planned at before one has been timed (an H200 host: `rayscale up` 24-33 s
# with its cluster, `rayscale triton up` ~7 s).
_PLANNED_S = {
    "rayscale": {"started": 40.0, "restarted": 30.0, "in place": 3.0, "reused": 0.0},
    "triton": {"started": 15.0, "restarted": 15.0, "reloaded": 12.0, "reused": 0.0},
}


class CandidateServer:
    """One server at a time, switched from candidate to candidate."""

    def __init__(self, cfg: TuneConfig):
        self.cfg = cfg
        self.current: Settings | None = None
        self.url: str | None = None
        self.started_cluster = False
        self._had_cluster: bool | None = None  # whether a cluster rayscale started ran before the search
        self.switches: dict[str, int] = {}
        self._timed: dict[str, list[float]] = {}
        self._version: str | None = None  # the rayscale deployment's pinned version
        self._state_dir: tempfile.TemporaryDirectory | None = None  # Triton's state

    # ---- planning ----------------------------------------------------------------------------

    def switch_for(self, settings: Settings) -> str:
        """How ``settings`` would be served from what runs now."""
        if self.current is None:
            return "started"
        if settings == self.current:
            return "reused"
        if isinstance(settings, RayscaleSettings):
            return "in place" if settings.restart_key == self.current.restart_key else "restarted"
        return "reloaded" if self.cfg.triton_reload else "restarted"

    def expected_s(self, settings: Settings) -> float:
        kind = self.switch_for(settings)
        timed = self._timed.get(kind)
        return max(timed) if timed else _PLANNED_S[self.cfg.target].get(kind, 30.0)

    def restart_s(self) -> float:
        """What giving the server some other candidate's settings is planned to cost, at most."""
        kind = "reloaded" if self.cfg.target == "triton" and self.cfg.triton_reload else "restarted"
        timed = self._timed.get(kind)
        return max(timed) if timed else _PLANNED_S[self.cfg.target][kind]

    # ---- switching ---------------------------------------------------------------------------

    def serve(self, settings: Settings) -> tuple[str, str, float]:
        """Serve ``settings``; returns (URL, how: one of SWITCHES, seconds it took). A ServerError leaves
        nothing running that the next call relies on."""
        kind = self.switch_for(settings)
        t0 = time.perf_counter()
        try:
            if kind == "started":
                self._start(settings)
            elif kind == "in place" and isinstance(settings, RayscaleSettings):
                self._reconfigure(settings)
            elif kind == "reloaded" and isinstance(settings, TritonSettings):
                self._reload(settings)
            elif kind == "restarted":
                self._stop()
                self._start(settings)
            elif kind != "reused":  # reused: it serves these settings already
                raise ServerError(f"{settings.label}: a {self.cfg.target} server cannot be {kind}")
            if self.url is None:
                raise ServerError(f"{settings.label}: the server started but named no URL")
            url = self.url
        except BaseException:
            self._stop()
            raise
        seconds = time.perf_counter() - t0
        self.current = settings
        self.switches[kind] = self.switches.get(kind, 0) + 1
        self._timed.setdefault(kind, []).append(seconds)
        return url, kind, seconds

    def close(self) -> None:
        """Stop what runs, and the Ray cluster if the search started it."""
        self._stop()
        if self.cfg.target != "rayscale" or self._had_cluster is None:
            return
        from rayscale.serve.cluster import down, read_state

        # also a cluster that a failed first start left behind
        if self.started_cluster or (not self._had_cluster and read_state() is not None):
            down(address=self.cfg.address, stop_cluster=True)
        self.started_cluster = False

    def _start(self, settings: Settings) -> None:
        cfg = self.cfg
        if isinstance(settings, RayscaleSettings):
            from rayscale.serve.cluster import read_state, up

            if self._had_cluster is None:
                self._had_cluster = read_state() is not None
            self._version = uuid.uuid4().hex
            serve_cfg = settings.serve_config(
                cfg.gpus,
                model_dir=cfg.model_dir,
                provider=cfg.provider,
                port=cfg.port,
                host=LOCAL_HOST,
                cpus_per_replica=cfg.cpus_per_replica,
            )
            result = up(
                serve_cfg,
                address=cfg.address,
                exporter=False,
                num_gpus=cfg.gpus if cfg.address is None else None,
                version=self._version,
            )
            self.started_cluster |= result.started_cluster
            self.url = result.url
        else:
            from rayscale.triton.server import triton_up

            self._state_dir = tempfile.TemporaryDirectory(prefix="rayscale-tune-triton-")
            self.url = triton_up(self._triton_config(settings), state_dir=self._state_dir.name).url
        self.current = settings

    def _reconfigure(self, settings: RayscaleSettings) -> None:
        from rayscale.serve.scaling import reconfigure

        if self._version is None:
            raise ServerError("no rayscale server runs here to change in place")
        changes = {name: getattr(settings, name) for name in RayscaleSettings.in_place}
        reconfigure("rayscale", changes, version=self._version)

    def _reload(self, settings: TritonSettings) -> None:
        from rayscale.triton.server import triton_reload

        if self._state_dir is None:
            raise ServerError("no Triton server runs here to reload")
        triton_reload(self._triton_config(settings).batching(), state_dir=self._state_dir.name)

    def _triton_config(self, settings: TritonSettings):
        cfg = self.cfg
        return settings.triton_config(
            cfg.gpus,
            images_per_request=cfg.images_per_request,
            http_port=cfg.port,
            model_dir=cfg.model_dir,
            provider=cfg.provider,
            model_control="explicit" if cfg.triton_reload else "none",
        )

    def _stop(self) -> None:
        if self.current is None and self._state_dir is None:
            return
        self.current, self.url = None, None
        if self.cfg.target == "rayscale":
            from rayscale.serve.cluster import down

            try:
                down(address=self.cfg.address, stop_cluster=False)
            except ServerError:
                pass  # nothing of ours left to stop
            return
        if self._state_dir is not None:
            from rayscale.triton.server import triton_down

            try:
                triton_down(state_dir=self._state_dir.name)
            finally:
                self._state_dir.cleanup()
                self._state_dir = None
