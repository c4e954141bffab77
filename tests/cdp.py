"""A small Chrome DevTools Protocol client for the report's browser tests: headless Chromium
(Debian's package, `make browser`) started on a fresh profile, one page driven over its
websocket (the websocket-client package): load a file, run JavaScript, press and drag the mouse,
take a screenshot, and collect every script error and console error of the page."""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--use-angle=swiftshader", "--enable-unsafe-swiftshader", "--hide-scrollbars",
         "--remote-debugging-port=0", "--remote-allow-origins=*"]


def chromium_exe() -> str:
    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    if exe is None:
        pytest.fail("headless Chromium is not installed (Debian package 'chromium'; "
                    "`make browser` installs it): the report cannot be checked in a browser")
    return exe


class Browser:
    """``with Browser(tmp_path) as b: b.open(path); b.eval("1 + 1")``."""

    def __init__(self, tmp_path: Path, width: int = 1400, height: int = 1000):
        self.profile = Path(tmp_path) / "chromium-profile"
        self.downloads = Path(tmp_path) / "downloads"
        self.size = (width, height)
        self.proc = None
        self.ws = None
        self._id = 0
        self.errors: list[str] = []

    def __enter__(self):
        try:
            return self._start()
        except BaseException:
            self.__exit__(None, None, None)  # no browser left behind
            raise

    def _start(self):
        import websocket

        self.profile.mkdir(parents=True, exist_ok=True)
        self.downloads.mkdir(parents=True, exist_ok=True)
        (self.profile / "DevToolsActivePort").unlink(missing_ok=True)  # a profile used before
        self.proc = subprocess.Popen(
            [chromium_exe(), *FLAGS, f"--user-data-dir={self.profile}",
             f"--window-size={self.size[0]},{self.size[1]}", "about:blank"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        port_file = self.profile / "DevToolsActivePort"
        deadline = time.monotonic() + 60
        while not port_file.exists() or len(port_file.read_text().splitlines()) < 2:
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("chromium did not start its DevTools endpoint")
            time.sleep(0.1)
        port = int(port_file.read_text().splitlines()[0])
        import urllib.request

        with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=10) as r:
            pages = [t for t in json.load(r) if t.get("type") == "page"]
        self.ws = websocket.create_connection(pages[0]["webSocketDebuggerUrl"], timeout=60,
                                              suppress_origin=True)
        for domain in ("Page.enable", "Runtime.enable", "Log.enable"):
            self.call(domain)
        self.call("Emulation.setDeviceMetricsOverride", width=self.size[0],
                  height=self.size[1], deviceScaleFactor=1, mobile=False)
        self.call("Browser.setDownloadBehavior", behavior="allow",
                  downloadPath=str(self.downloads))
        return self

    def __exit__(self, *exc):
        try:
            if self.ws is not None:
                self.ws.close()
        finally:
            if self.proc is not None:
                # the folder of the profile's singleton socket (/tmp/org.chromium.Chromium.*,
                # the system's temporary folder: a socket's path must stay short), which a
                # browser ended by terminate() leaves behind
                try:
                    sockets = Path(os.readlink(self.profile / "SingletonSocket")).parent
                except OSError:
                    sockets = None
                self.proc.terminate()
                try:
                    self.proc.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait()
                if sockets is not None and sockets.name.startswith("org.chromium."):
                    shutil.rmtree(sockets, ignore_errors=True)

    # ------------------------------------------------------------------ protocol

    def _event(self, msg: dict):
        method = msg.get("method")
        if method == "Runtime.exceptionThrown":
            d = msg["params"]["exceptionDetails"]
            self.errors.append((d.get("exception") or {}).get("description") or d.get("text"))
        elif method == "Runtime.consoleAPICalled" and msg["params"]["type"] == "error":
            self.errors.append(" ".join(str(a.get("value", a.get("description")))
                                        for a in msg["params"]["args"]))
        elif method == "Log.entryAdded" and msg["params"]["entry"]["level"] == "error":
            self.errors.append(msg["params"]["entry"]["text"])

    def call(self, method: str, **params):
        self._id += 1
        me = self._id
        self.ws.send(json.dumps({"id": me, "method": method, "params": params}))
        while True:
            msg = json.loads(self.ws.recv())
            if msg.get("id") == me:
                if "error" in msg:
                    raise RuntimeError(f"{method}: {msg['error']}")
                return msg.get("result", {})
            self._event(msg)

    def eval(self, expr: str):
        """The value of a JavaScript expression (promises awaited)."""
        res = self.call("Runtime.evaluate", expression=expr, returnByValue=True,
                        awaitPromise=True)
        if "exceptionDetails" in res:
            raise RuntimeError(f"{expr}: {res['exceptionDetails']}")
        return res["result"].get("value")

    def wait_for(self, expr: str, timeout: float = 120):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = self.eval(expr)
            if value:
                return value
            time.sleep(0.1)
        raise AssertionError(f"timed out waiting for {expr}")

    def open(self, path: Path, ready: str = "document.body && document.body.dataset.ready === '1'"):
        self.call("Page.navigate", url=Path(path).resolve().as_uri())
        t0 = time.monotonic()
        self.wait_for(ready)
        return time.monotonic() - t0

    # ------------------------------------------------------------------ input

    def mouse(self, kind: str, x: float, y: float, buttons: int = 1, clicks: int = 1):
        self.call("Input.dispatchMouseEvent", type=kind, x=x, y=y, button="left",
                  buttons=buttons, clickCount=clicks)

    def click(self, x: float, y: float):
        self.mouse("mouseMoved", x, y, buttons=0)
        self.mouse("mousePressed", x, y)
        self.mouse("mouseReleased", x, y, buttons=0)

    def drag(self, points: list[tuple[float, float]]):
        """Press at the first point, move through the others, release at the last."""
        x, y = points[0]
        self.mouse("mouseMoved", x, y, buttons=0)
        self.mouse("mousePressed", x, y)
        for x, y in points[1:]:
            self.mouse("mouseMoved", x, y)
            time.sleep(0.01)
        self.mouse("mouseReleased", x, y, buttons=0)

    def rect(self, selector: str) -> dict:
        """The element's box in the viewport after scrolling it into view."""
        return self.eval(
            f"(function(){{var e=document.querySelector({json.dumps(selector)});"
            "e.scrollIntoView({block:'center'});var r=e.getBoundingClientRect();"
            "return {x:r.x,y:r.y,w:r.width,h:r.height};})()")

    def click_on(self, selector: str):
        r = self.rect(selector)
        self.click(r["x"] + r["w"] / 2, r["y"] + r["h"] / 2)

    def screenshot(self, path: Path, full: bool = False) -> Path:
        params = {"format": "png"}
        if full:
            params["captureBeyondViewport"] = True
        data = self.call("Page.captureScreenshot", **params)["data"]
        Path(path).write_bytes(base64.b64decode(data))
        return Path(path)
