"""The app under load and attack: a real `python app.py` process gets series of honest and hostile requests over raw
HTTP; per series, what the visitors got back and what the server kept (resident memory, temporary files).

    python -m bench.app_abuse               # a tiny untrained model: the figures are the server's, not the model's
    python -m bench.app_abuse --app_dir ../old-checkout --tag before    # another version of the app

Writes results/app_abuse.{json,md} (with `--tag`, results/app_abuse_TAG.*). The hostile-input tests
(tests/app/test_app_hostile.py) assert the same behaviour; this script records the figures.
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import os
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from PIL import Image

from bench.machine_info import machine_info
from tests.helpers import lesion_image, save_tiny_model
from tools.app_process import REPO, AppProcess, app_process, call_predict, predict_data, upload_file

MB = 1_000_000
FILE_DATA = {"_type": "gradio.FileData"}


def png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()


def data_url(content: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(content).decode()


def outcome(event: str, payload: Any) -> str:
    if event == "complete":
        return "answered"
    if event == "error":
        return "refused with a message" if payload else "generic error"
    return event  # "http 413" and the like


def run_series(server: AppProcess, name: str, requests: list[Callable[[], tuple[str, Any]]], clients: int) -> dict:
    """Send `requests` from `clients` threads; what came back and what the server kept."""
    files_before, rss_before = len(server.files()), server.rss()
    server.reset_peak()
    start = time.perf_counter()
    with ThreadPoolExecutor(max_workers=clients) as pool:
        results = list(pool.map(lambda request: request(), requests))
    seconds = time.perf_counter() - start
    time.sleep(1)  # let the last responses' buffers go
    return {
        "series": name, "requests": len(requests), "clients": clients, "seconds": round(seconds, 1),
        "outcomes": dict(Counter(outcome(*result) for result in results)),
        "rss_before_mb": round(rss_before / MB), "rss_after_mb": round(server.rss() / MB),
        "peak_over_start_mb": round((server.peak() - rss_before) / MB),
        "files_before": files_before, "files_after": len(server.files()),
    }


def series(server: AppProcess, work: Path) -> list[dict]:
    url = server.url
    honest = upload_file(url, png(lesion_image()))
    secret = work / "secret.png"
    lesion_image(seed=7).save(secret)
    strip, deep = work / "strip.png", work / "16-bit.png"
    Image.new("RGB", (50_000, 32), (200, 150, 130)).save(strip)
    Image.fromarray(np.full((7000, 7000), 40_000, dtype=np.uint16)).save(deep, compress_level=1)
    paths = [str(secret), "docs/app-screenshot.png", "app.py", "/etc/passwd", f"{server.upload_dir}/../x.png",
             str(REPO / "README.md"), "/no/such/file.png", f"file://{secret}"]

    def predict(image: Any, **fields: Any) -> Callable[[], tuple[str, Any]]:
        return lambda: call_predict(url, predict_data(image, **fields))

    def uploaded(path: Path) -> Callable[[], tuple[str, Any]]:
        return lambda: call_predict(url, predict_data({"path": upload_file(url, path.read_bytes(), path.name)}))

    def oversized_body() -> tuple[str, Any]:
        response = httpx.post(f"{url}gradio_api/call/predict", content=b"x" * 60 * MB, timeout=120,
                              headers={"content-type": "application/json"})
        return (f"http {response.status_code}", None) if response.status_code != 200 else ("accepted", None)

    over_limit = data_url(b"\x89PNG" + b"\0" * 20 * MB)
    not_an_image = data_url(os.urandom(19 * MB))
    return [
        run_series(server, "honest upload, Grad-CAM on, one client", [predict({"path": honest}, age=50)] * 200, 1),
        run_series(server, "honest upload, Grad-CAM on, 8 clients", [predict({"path": honest}, age=50)] * 64, 8),
        run_series(server, "paths the visitor did not upload (8 kinds, with and without meta)",
                   [predict({"path": path, **meta}) for path in paths for meta in ({}, {"meta": FILE_DATA})], 4),
        run_series(server, "data URL just above 20 MB", [predict({"url": over_limit})] * 16, 1),
        run_series(server, "data URL of 19 MB, not an image", [predict({"url": not_an_image})] * 16, 1),
        run_series(server, "request body of 60 MB", [oversized_body] * 8, 1),
        run_series(server, "age=True, 5 MB metadata text", [predict({"path": honest}, age=True),
                                                             predict({"path": honest}, age="x" * 5 * MB)] * 4, 1),
        run_series(server, "50000x32 strip, Grad-CAM on", [uploaded(strip)] * 3, 1),
        run_series(server, "16-bit 7000x7000 PNG (0.2 MB file)", [uploaded(deep)], 1),
    ]


def markdown(rows: list[dict]) -> str:
    lines = ["| series | requests | clients | outcomes | s | RSS before → after (MB) | peak over start (MB) "
             "| temp files before → after |", "|---|---|---|---|---|---|---|---|"]
    for row in rows:
        outcomes = ", ".join(f"{count} {kind}" for kind, count in row["outcomes"].items())
        lines.append(f"| {row['series']} | {row['requests']} | {row['clients']} | {outcomes} | {row['seconds']} | "
                     f"{row['rss_before_mb']} → {row['rss_after_mb']} | {row['peak_over_start_mb']} | "
                     f"{row['files_before']} → {row['files_after']} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, help="model directory (default: a tiny untrained test model)")
    parser.add_argument("--app_dir", type=Path, default=REPO, help="the checkout whose app.py is served")
    parser.add_argument("--tag", default="", help="suffix of the result files, e.g. 'before'")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        model = args.model or save_tiny_model(work / "model")
        with app_process(model.resolve(), work / "server", app_dir=args.app_dir.resolve()) as server:
            rows = series(server, work)
    table = markdown(rows)
    print(table)
    name = f"app_abuse_{args.tag}" if args.tag else "app_abuse"
    results = REPO / "bench" / "results"
    (results / f"{name}.json").write_text(json.dumps({"machine": machine_info(), "app_dir": str(args.app_dir),
                                                      "series": rows}, indent=2) + "\n")
    (results / f"{name}.md").write_text(f"{table}\n")


if __name__ == "__main__":
    main()
