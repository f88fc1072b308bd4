"""The app as its own `python app.py` process, and raw HTTP calls to it: what the hostile-input tests and the abuse
benchmark drive (run from the repository root: `python -m bench.app_abuse`, pytest)."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import psutil

from tools.screenshot import free_port

REPO = Path(__file__).resolve().parents[1]


@dataclasses.dataclass
class AppProcess:
    """A `python app.py` process and the folders it writes to."""

    url: str
    process: subprocess.Popen
    upload_dir: Path  # GRADIO_TEMP_DIR: Gradio's cache of uploads and outputs
    temp_dir: Path  # TMPDIR: the app's heatmap folder
    log: Path

    def rss(self) -> int:
        return psutil.Process(self.process.pid).memory_info().rss

    def reset_peak(self) -> None:
        Path(f"/proc/{self.process.pid}/clear_refs").write_text("5")  # VmHWM := the resident memory now

    def peak(self) -> int:
        status = Path(f"/proc/{self.process.pid}/status").read_text().splitlines()
        return int(next(line for line in status if line.startswith("VmHWM")).split()[1]) * 1024

    def files(self) -> set[Path]:
        """Every file in the server's cache and temporary folders."""
        return {path for folder in (self.upload_dir, self.temp_dir) for path in folder.rglob("*") if path.is_file()}


@contextlib.contextmanager
def app_process(model_dir: Path | None, root: Path, app_dir: Path = REPO) -> Iterator[AppProcess]:
    """`python app.py --model model_dir` (`None`: no `--model`, the app's default) in its own process, run from
    `app_dir` (relative paths name the project's sources), with its home (where the examples are generated), Gradio
    cache and temporary folders under `root`; stopped with Ctrl-C (SIGINT) when the block ends, unless it ended
    already."""
    folders = {name: root / name for name in ("home", "gradio", "tmp")}
    for folder in folders.values():
        folder.mkdir(parents=True, exist_ok=True)
    port = free_port()
    env = {**os.environ, "HOME": str(folders["home"]), "GRADIO_TEMP_DIR": str(folders["gradio"]),
           "TMPDIR": str(folders["tmp"]), "HF_HUB_OFFLINE": "1", "GRADIO_ANALYTICS_ENABLED": "False"}
    log = root / f"server-{port}.log"
    with log.open("wb") as output:
        model = ["--model", str(model_dir)] if model_dir is not None else []
        process = subprocess.Popen([sys.executable, "app.py", *model, "--port", str(port)],
                                   cwd=app_dir, env=env, stdout=output, stderr=subprocess.STDOUT)
    server = AppProcess(f"http://127.0.0.1:{port}/", process, folders["gradio"], folders["tmp"], log)
    try:
        deadline = time.monotonic() + 300
        while not answers(server.url):
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"app.py did not start ({process.poll()=}):\n{log.read_text()[-3000:]}")
            time.sleep(0.5)
        yield server
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGINT)
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()


def answers(url: str) -> bool:
    """Whether a web server at `url` answers 200."""
    try:
        return httpx.get(url, timeout=5).status_code == 200
    except httpx.TransportError:
        return False


def call_predict(url: str, data: list[Any], timeout: float = 120) -> tuple[str, Any]:
    """POST /gradio_api/call/predict, then read its event stream: ("complete", outputs), ("error", message or None)
    or ("http <status>", body) when the request itself is refused."""
    response = httpx.post(f"{url}gradio_api/call/predict", json={"data": data}, timeout=timeout)
    if response.status_code != 200:
        return f"http {response.status_code}", response.text
    event = None
    with httpx.stream("GET", f"{url}gradio_api/call/predict/{response.json()['event_id']}", timeout=timeout) as stream:
        for line in stream.iter_lines():
            if line.startswith("event:"):
                event = line.removeprefix("event:").strip()
            elif line.startswith("data:") and event in ("complete", "error"):
                payload = json.loads(line.removeprefix("data:"))
                return event, payload if event == "complete" else (payload or {}).get("error")
    return "no result", None


def predict_data(
    image: Any, age: Any = None, sex: Any = "unknown", site: Any = "unknown", tta: Any = False, explain: Any = True
) -> list[Any]:
    """The /predict inputs in the API's order for a model of the synthetic set (the tests' tiny models): image, age,
    sex, anatom_site_general, tta, explain; `tta` and `explain` as sent, booleans or not."""
    return [image, age, sex, site, tta, explain]


def upload_file(url: str, content: bytes, name: str = "lesion.png") -> str:
    """Upload `content` as a visitor's browser does; the path Gradio gives back."""
    response = httpx.post(f"{url}gradio_api/upload", files={"files": (name, content, "image/png")}, timeout=60)
    response.raise_for_status()
    return response.json()[0]
