"""A real headless browser for page tests: Debian's chromium driven by Debian's chromedriver over the W3C
WebDriver protocol (plain HTTP and JSON, so no client library and no browser download at test time).
.ci/run installs both packages. Flags as this machine needs them (no sandbox as root, no GPU, no
background network)."""
from __future__ import annotations

import base64
import json
import shutil
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

ELEMENT = "element-6066-11e4-a52e-4f735466cecf"


class El(str):
    """An element reference (passed to scripts as the element itself)."""
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync", "--window-size=1280,1400"]


def available() -> str | None:
    """Why no browser test can run here, or None."""
    if not (shutil.which("chromium") and shutil.which("chromedriver")):
        return "Debian packages chromium and chromium-driver not installed (.ci/run installs them)"
    return None


class Browser:
    def __init__(self):
        from duo.llamacpp import llama_server

        self.port = llama_server.free_port()
        self.profile = tempfile.mkdtemp(prefix="duo-chromium-")
        self.driver = subprocess.Popen([shutil.which("chromedriver"), f"--port={self.port}"],
                                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.base = f"http://127.0.0.1:{self.port}"
        deadline = time.monotonic() + 30
        while True:
            try:
                self._call("GET", "/status")
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError("chromedriver did not start")
                time.sleep(0.1)
        caps = {"capabilities": {"alwaysMatch": {"browserName": "chrome", "goog:chromeOptions": {
            "binary": shutil.which("chromium"), "args": ARGS + [f"--user-data-dir={self.profile}"]}}}}
        self.session = self._call("POST", "/session", caps)["sessionId"]

    def _call(self, method: str, path: str, body: dict | None = None):
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(self.base + path, data=data, method=method,
                                     headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=60) as resp:
                return json.loads(resp.read())["value"]
        except urllib.error.HTTPError as err:
            raise RuntimeError(f"webdriver {method} {path}: {err.read()[:500]!r}") from None

    def cmd(self, method: str, path: str, body: dict | None = None):
        return self._call(method, f"/session/{self.session}{path}", body)

    def get(self, url: str) -> None:
        self.cmd("POST", "/url", {"url": url})

    def refresh(self) -> None:
        self.cmd("POST", "/refresh", {})

    def js(self, script: str, *args):
        args = [{ELEMENT: a} if isinstance(a, El) else a for a in args]
        return self.cmd("POST", "/execute/sync", {"script": script, "args": args})

    def find(self, css: str, within: str | None = None) -> list[str]:
        path = f"/element/{within}/elements" if within else "/elements"
        return [El(e[ELEMENT]) for e in self.cmd("POST", path, {"using": "css selector", "value": css})]

    def wait(self, css: str, count: int = 1, timeout: float = 20.0) -> list[str]:
        deadline = time.monotonic() + timeout
        while True:
            found = self.find(css)
            if len(found) >= count:
                return found
            if time.monotonic() > deadline:
                raise AssertionError(f"{count} x '{css}' not on the page after {timeout} s")
            time.sleep(0.1)

    def until(self, condition, what: str, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while not condition():
            if time.monotonic() > deadline:
                raise AssertionError(f"not so after {timeout} s: {what}")
            time.sleep(0.1)

    def click(self, element: str) -> None:
        self.cmd("POST", f"/element/{element}/click", {})

    def type(self, element: str, text: str, clear: bool = True) -> None:
        if clear:
            self.cmd("POST", f"/element/{element}/clear", {})
        if text:
            self.cmd("POST", f"/element/{element}/value", {"text": text})

    def text(self, element: str) -> str:
        return self.cmd("GET", f"/element/{element}/text")

    def screenshot(self, path: Path) -> Path:
        path.write_bytes(base64.b64decode(self.cmd("GET", "/screenshot")))
        return path

    def close(self) -> None:
        try:
            self.cmd("DELETE", "")
        except Exception:
            pass
        self.driver.terminate()
        self.driver.wait(timeout=10)
        shutil.rmtree(self.profile, ignore_errors=True)
