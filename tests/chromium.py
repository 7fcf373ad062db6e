"""A real headless Chromium for tests, driven over the DevTools protocol on a pipe.

`--remote-debugging-pipe` makes Chromium read protocol messages (JSON, each ended by a NUL byte)
from its fd 3 and write replies and events to its fd 4: no port, no websocket library, nothing
downloaded. Chromium is Debian's `chromium` package; `find_chromium` installs it with apt-get
when it is missing and the tests run as root, and says why not otherwise.
"""

from __future__ import annotations

import base64
import json
import os
import queue
import shutil
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--remote-debugging-pipe",
)
DEADLINE = 120.0  # seconds: a failure guard for answers that come in well under one


def _which() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


def find_chromium() -> tuple[str | None, str]:
    """(Chromium's path, "") or (None, why it is not there); installs it when root."""
    if _which():
        return _which(), ""
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        return None, "chromium is not installed, and apt-get needs root"
    install = ["apt-get", "install", "-y", "-q", "chromium"]
    if subprocess.run(install, capture_output=True, timeout=1800).returncode != 0:
        subprocess.run(["apt-get", "update", "-q"], capture_output=True, timeout=1800)
        subprocess.run(install, capture_output=True, timeout=1800)
    found = _which()
    return (found, "") if found else (None, "`apt-get install -y chromium` failed")


class Browser:
    """One Chromium process with one page; `send` a protocol command, read `events`."""

    def __init__(self, exe: str, profile: Path, size: tuple[int, int] = (1366, 900)) -> None:
        to_chrome_r, self._to_chrome = os.pipe()
        self._from_chrome, from_chrome_w = os.pipe()
        redirect = f'exec "$0" "$@" 3<&{to_chrome_r} 4>&{from_chrome_w}'
        args = [*FLAGS, f"--user-data-dir={profile}", f"--window-size={size[0]},{size[1]}"]
        self.proc = subprocess.Popen(
            ["bash", "-c", redirect, exe, *args, "about:blank"],
            pass_fds=(to_chrome_r, from_chrome_w),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        os.close(to_chrome_r)
        os.close(from_chrome_w)
        self.inbox: queue.Queue = queue.Queue()
        self.events: list[dict[str, Any]] = []
        self._next_id = 0
        threading.Thread(target=self._read, daemon=True).start()
        self.session = self._attach()

    def _read(self) -> None:
        buffer = b""
        while chunk := os.read(self._from_chrome, 1 << 16):
            buffer += chunk
            *messages, buffer = buffer.split(b"\0")
            for message in messages:
                self.inbox.put(json.loads(message))
        self.inbox.put(None)  # Chromium is gone

    def send(self, method: str, params: dict | None = None, session: bool = True) -> dict:
        """Send a command (to the page's session unless `session` is False); its result."""
        self._next_id += 1
        message: dict[str, Any] = {"id": self._next_id, "method": method, "params": params or {}}
        if session:
            message["sessionId"] = self.session
        os.write(self._to_chrome, json.dumps(message).encode() + b"\0")
        reply = self._until(lambda m: m.get("id") == self._next_id)
        if "error" in reply:
            raise RuntimeError(f"{method}: {reply['error']}")
        return reply.get("result", {})

    def wait_event(self, method: str) -> dict:
        return self._until(lambda m: m.get("method") == method)

    def _until(self, wanted: Any) -> dict:
        deadline = time.monotonic() + DEADLINE
        while True:
            message = self.inbox.get(timeout=max(deadline - time.monotonic(), 0.001))
            if message is None:
                raise RuntimeError("chromium exited")
            if "method" in message:
                self.events.append(message)
            if wanted(message):
                return message

    def _attach(self) -> str:
        targets = self.send("Target.getTargets", session=False)["targetInfos"]
        page = next(t for t in targets if t["type"] == "page")
        attached = self.send(
            "Target.attachToTarget", {"targetId": page["targetId"], "flatten": True}, session=False
        )
        return attached["sessionId"]

    def open(self, url: str) -> None:
        """Load `url` and wait for its load event, with the page's console and network on."""
        for domain in ("Page", "Runtime", "Log", "Network"):
            self.send(f"{domain}.enable")
        self.send("Page.navigate", {"url": url})
        self.wait_event("Page.loadEventFired")

    def evaluate(self, expression: str) -> Any:
        """The value of a JavaScript expression (awaited when it is a promise)."""
        result = self.send(
            "Runtime.evaluate",
            {"expression": expression, "awaitPromise": True, "returnByValue": True},
        )
        if "exceptionDetails" in result:
            raise RuntimeError(f"the page's script failed: {result['exceptionDetails']}")
        return result["result"].get("value")

    def screenshot(self, path: Path) -> None:
        data = self.send("Page.captureScreenshot", {"format": "png"})["data"]
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(base64.b64decode(data))

    def console_errors(self) -> list[str]:
        """Errors the page reported: console.error, uncaught exceptions, failed loads, CSP."""
        errors = []
        for e in self.events:
            p = e.get("params", {})
            if e["method"] == "Runtime.consoleAPICalled" and p.get("type") == "error":
                errors.append(" ".join(str(a.get("value")) for a in p.get("args", [])))
            elif e["method"] == "Runtime.exceptionThrown":
                errors.append(str(p.get("exceptionDetails", {}).get("text")))
            elif e["method"] == "Log.entryAdded" and p["entry"]["level"] == "error":
                errors.append(p["entry"]["text"])
        return errors

    def requested_urls(self) -> list[str]:
        return [
            e["params"]["request"]["url"]
            for e in self.events
            if e["method"] == "Network.requestWillBeSent"
        ]

    def close(self) -> None:
        try:
            self.send("Browser.close", session=False)
            self.proc.wait(timeout=30)
        except (RuntimeError, OSError, queue.Empty, subprocess.TimeoutExpired):
            self.proc.kill()
            self.proc.wait()
        finally:
            os.close(self._to_chrome)
