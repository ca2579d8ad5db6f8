"""Headless Chromium driven over the DevTools protocol on a pipe: load a page, keep what a reader would see.

The page's console errors, uncaught exceptions and failed loads come from the protocol's own events
(Runtime, Log), every request it made from Network, and the screenshot from Page: no scraping of
Chromium's log. Chromium runs with no network, no sandbox (containers), no GPU and a fresh profile.

    python tests/browser.py report.html shot.png [--width 1280] [--height 2000] [--full-page]
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["PageLoad", "chromium_binary", "load_page"]

FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--hide-scrollbars", "--remote-debugging-pipe"]  # fmt: skip


def chromium_binary() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        found = shutil.which(name)
        if found:
            return found
    return None


@dataclass
class PageLoad:
    errors: list[str] = field(default_factory=list)  # console errors, exceptions, failed loads
    requests: list[str] = field(default_factory=list)  # every URL the page asked for, itself first
    screenshot_png: bytes = b""
    size: tuple[int, int] = (0, 0)  # the page's full width and height, CSS pixels
    pdf: bytes = b""  # the page printed (print=True)


class _Pipe:
    """The protocol's messages: JSON, each ended by a NUL byte, on Chromium's fds 3 (in) and 4 (out)."""

    def __init__(self, binary: str, profile: str):
        to_chrome, self._send = os.pipe()
        self._recv, from_chrome = os.pipe()

        def wire() -> None:  # in the child: its fds 3 and 4 (dup2 clears close-on-exec)
            read_end, write_end = os.dup(to_chrome), os.dup(from_chrome)
            os.dup2(read_end, 3)
            os.dup2(write_end, 4)

        self.process = subprocess.Popen([binary, *FLAGS, f"--user-data-dir={profile}", "about:blank"],
                                        preexec_fn=wire, close_fds=False, stdin=subprocess.DEVNULL,
                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
        os.close(to_chrome)
        os.close(from_chrome)
        self._buffer = b""
        self._id = 0
        self.events: list[dict] = []

    def _read(self, deadline: float) -> dict:
        while b"\0" not in self._buffer:
            if time.monotonic() > deadline:
                raise TimeoutError("Chromium did not answer in time")
            chunk = os.read(self._recv, 1 << 20)
            if not chunk:
                raise RuntimeError(f"Chromium exited (code {self.process.poll()})")
            self._buffer += chunk
        message, _, self._buffer = self._buffer.partition(b"\0")
        return json.loads(message)

    def call(self, method: str, params: dict | None = None, session: str | None = None, timeout_s: float = 30.0) -> dict:
        self._id += 1
        message = {"id": self._id, "method": method, "params": params or {}}
        if session:
            message["sessionId"] = session
        os.write(self._send, json.dumps(message).encode() + b"\0")
        deadline = time.monotonic() + timeout_s
        while True:
            reply = self._read(deadline)
            if reply.get("id") == self._id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply.get("result", {})
            self.events.append(reply)

    def wait_for(self, method: str, timeout_s: float = 30.0) -> None:
        deadline = time.monotonic() + timeout_s
        while not any(e.get("method") == method for e in self.events):
            self.events.append(self._read(deadline))

    def close(self) -> None:
        try:
            self.call("Browser.close", timeout_s=5.0)
        except (RuntimeError, TimeoutError, OSError):
            pass
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        os.close(self._send)
        os.close(self._recv)


def _errors(events: list[dict]) -> list[str]:
    errors = []
    for e in events:
        params = e.get("params", {})
        if e.get("method") == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert"):
            errors.append("console: " + " ".join(str(a.get("value", a.get("description", ""))) for a in params["args"]))
        elif e.get("method") == "Runtime.exceptionThrown":
            details = params["exceptionDetails"]
            errors.append("exception: " + details.get("exception", {}).get("description", details.get("text", "")))
        elif e.get("method") == "Log.entryAdded" and params["entry"]["level"] == "error":
            errors.append(f"{params['entry']['source']}: {params['entry']['text']} {params['entry'].get('url', '')}".strip())
    return errors


def load_page(
    url: str,
    *,
    width: int = 1280,
    height: int = 2000,
    full_page: bool = False,
    media: str = "screen",
    print_pdf: bool = False,
    binary: str | None = None,
) -> PageLoad:
    """Open ``url`` in a fresh headless Chromium, wait for it to load, and return what it showed and said.

    ``media="print"`` lays the page out as it prints (its print style sheet); ``print_pdf`` also prints it
    (A4 landscape, as the page asks).
    """
    binary = binary or chromium_binary()
    if binary is None:
        raise FileNotFoundError("no chromium found: apt-get install -y chromium")
    with tempfile.TemporaryDirectory(prefix="rayscale-chromium-") as profile:
        pipe = _Pipe(binary, profile)
        try:
            target = pipe.call("Target.createTarget", {"url": "about:blank"})["targetId"]
            session = pipe.call("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
            for domain in ("Page", "Runtime", "Log", "Network"):
                pipe.call(f"{domain}.enable", session=session)
            pipe.call(
                "Emulation.setDeviceMetricsOverride",
                {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False},
                session=session,
            )
            pipe.call("Emulation.setEmulatedMedia", {"media": media}, session=session)
            pipe.events.clear()
            pipe.call("Page.navigate", {"url": url}, session=session)
            pipe.wait_for("Page.loadEventFired")
            metrics = pipe.call("Page.getLayoutMetrics", session=session)["cssContentSize"]
            size = (int(metrics["width"]), int(metrics["height"]))
            shot: dict = {"format": "png"}
            if full_page:
                shot.update(captureBeyondViewport=True, clip={"x": 0, "y": 0, "width": size[0], "height": size[1], "scale": 1})
            png = base64.b64decode(pipe.call("Page.captureScreenshot", shot, session=session)["data"])
            pdf = b""
            if print_pdf:
                pdf = base64.b64decode(pipe.call("Page.printToPDF", {"preferCSSPageSize": True}, session=session)["data"])
            requests = [e["params"]["request"]["url"] for e in pipe.events if e.get("method") == "Network.requestWillBeSent"]
            return PageLoad(errors=_errors(pipe.events), requests=requests, screenshot_png=png, size=size, pdf=pdf)
        finally:
            pipe.close()


def main() -> None:
    parser = argparse.ArgumentParser(description="Screenshot a page in headless Chromium.")
    parser.add_argument("page", type=Path)
    parser.add_argument("png", type=Path)
    parser.add_argument("--width", type=int, default=1280)
    parser.add_argument("--height", type=int, default=2000)
    parser.add_argument("--full-page", action="store_true")
    args = parser.parse_args()
    page = load_page(args.page.resolve().as_uri(), width=args.width, height=args.height, full_page=args.full_page)
    args.png.write_bytes(page.screenshot_png)
    print(f"{args.png}: page {page.size[0]}×{page.size[1]} px, {len(page.errors)} error(s)")
    for error in page.errors:
        print(f"  {error}")


if __name__ == "__main__":
    main()
