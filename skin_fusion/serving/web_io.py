"""What crosses the web app's boundary. In: a file the web framework itself received (in its upload folder), or an
image's bytes in a data URL within the upload limit, in request bodies of bounded size. Out: heatmaps as files. And
the server process's memory settings, so that what large requests used goes back to the system.

A path anywhere else (absolute, relative, with `..`, a symlink out of the folder, a directory) is refused with one
fixed message that says nothing about the server's files: whether a path exists, is empty or how large it is would
tell a visitor what the server holds.
"""

from __future__ import annotations

import atexit
import base64
import binascii
import contextlib
import ctypes
import gc
import hashlib
import io
import math
import os
import shutil
import tempfile
import time
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from PIL import Image
from starlette.exceptions import HTTPException
from starlette.responses import PlainTextResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ..modeling.metadata_encoding import quote
from .image_io import MAX_UPLOAD_BYTES, ImageInputError

REFUSED_UPLOAD = (
    "This image cannot be used: only files uploaded to this app are read. Upload the photo again (in Python: "
    "gradio_client's handle_file), or send its bytes as a base64 data URL."
)
# base64 writes 3 bytes as 4 characters: a data URL holding MAX_UPLOAD_BYTES has at most this many after the comma.
MAX_DATA_URL_CHARS = 4 * math.ceil(MAX_UPLOAD_BYTES / 3)
# One data URL at the upload limit plus the form's short fields; an upload's multipart body is smaller still.
MAX_REQUEST_BYTES = MAX_DATA_URL_CHARS + 1_000_000
# Freed memory blocks from this size up go straight back to the system. By default glibc raises this threshold to the
# largest block freed (up to 32 MB) and keeps such blocks in per-thread pools: a few concurrent 27 MB request bodies
# would then hold hundreds of MB for good. Blocks of a model's forward pass at batch 1 stay below it.
LARGE_BLOCK_BYTES = 8 * 2**20
M_MMAP_THRESHOLD = -3  # mallopt's parameter number, from glibc's <malloc.h>


def upload_source(payload: Any, upload_dir: str | Path) -> str | bytes | None:
    """The bytes of a data URL within the upload limit, or the path of a file inside `upload_dir`; None for nothing.

    Args:
        payload: an image input as the web app received it, unprocessed: `{"path": ..., "url": ...}` or None.
        upload_dir: the folder where the web framework stores the files it received (Gradio's cache folder).

    Raises:
        ImageInputError: `REFUSED_UPLOAD` for any path outside `upload_dir` or not a file once symlinks and `..` are
            resolved, and for any payload that is not a file description; a message of its own for an oversized or
            undecodable data URL.
    """
    if payload is None:
        return None
    if not isinstance(payload, Mapping):
        raise ImageInputError(REFUSED_UPLOAD)
    path, url = payload.get("path"), payload.get("url")
    if isinstance(url, str) and url.startswith("data:"):
        return data_url_bytes(url)
    if path is None and url is None:
        return None
    if not isinstance(path, str):
        raise ImageInputError(REFUSED_UPLOAD)
    try:
        resolved = Path(path).resolve()  # symlinks and ".." first: the check is on the file that would be read
        inside = resolved.is_relative_to(Path(upload_dir).resolve()) and resolved.is_file()
    except (OSError, ValueError):  # a NUL byte, a loop of symlinks
        inside = False
    if not inside:
        raise ImageInputError(REFUSED_UPLOAD)
    return str(resolved)


class OptionInputError(ValueError):
    """A request's option (a checkbox of the form) that is not a boolean; the message says what to send."""


def checkbox_value(name: str, value: Any, default: bool) -> bool:
    """A checkbox's raw value: JSON true or false, or null for the form's `default`. Anything else ("false", 0, "no")
    is refused rather than read by its truthiness, which would turn the string "false" into True."""
    if value is None:
        return default
    if isinstance(value, bool):
        return value
    raise OptionInputError(f"'{name}' must be true or false, got {quote(value)}. Send a JSON boolean (true / false), "
                           "or leave it out for the form's default.")


def data_url_bytes(url: str, max_bytes: int = MAX_UPLOAD_BYTES) -> bytes:
    """The bytes of a base64 `data:` URL, its length checked before anything is decoded."""
    header, _, data = url.partition(",")
    if not header.endswith(";base64"):
        raise ImageInputError("A data URL must carry its image in base64 (data:image/png;base64,...). Encode the "
                              "file with base64, or upload it instead.")
    if len(data) > 4 * math.ceil(max_bytes / 3):
        raise ImageInputError(f"The data URL holds more than the {max_bytes / 1e6:.0f} MB upload limit. Save the "
                              "image as a JPEG or downscale it, then send it again.")
    try:
        return base64.b64decode(data)
    except binascii.Error as err:
        raise ImageInputError("The data URL is not valid base64. Encode the image file with base64 and send it "
                              "again.") from err


class RequestBodyLimit:
    """ASGI middleware: a request whose body is larger than `max_bytes` gets 413 before the app holds it whole."""

    def __init__(self, app: ASGIApp, max_bytes: int = MAX_REQUEST_BYTES) -> None:
        self.app, self.max_bytes = app, max_bytes
        self.message = (f"The request is larger than {max_bytes / 1e6:.0f} MB. Upload images of at most "
                        f"{MAX_UPLOAD_BYTES / 1e6:.0f} MB.")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length", b"0")
        if not declared.isdigit() or int(declared) > self.max_bytes:
            await PlainTextResponse(self.message, status_code=413)(scope, receive, send)
            return
        received = 0

        async def counted_receive() -> Message:  # a body sent in chunks, without a length, is counted as it comes
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > self.max_bytes:
                raise HTTPException(413, self.message)
            return message

        await self.app(scope, counted_receive, send)


def image_file(image: Image.Image | None, folder: Path, keep_seconds: float = 600) -> str | None:
    """`image` as a WebP file named by its content, written atomically; files older than `keep_seconds` are swept.

    Gradio 6.31 saves a returned PIL image by rewriting a content-named cache file in place, so concurrent requests
    with the same heatmap break each other's downloads ("Too much data for declared Content-Length"); a returned
    path is copied into Gradio's cache atomically instead, after which our file is no longer needed.
    """
    if image is None:
        return None
    buffer = io.BytesIO()
    image.save(buffer, format="WEBP")
    path, staging = folder / f"{hashlib.sha256(buffer.getvalue()).hexdigest()}.webp", folder / uuid.uuid4().hex
    staging.write_bytes(buffer.getvalue())
    os.replace(staging, path)
    for old in folder.iterdir():
        with contextlib.suppress(FileNotFoundError):  # another request swept it first
            if old.stat().st_mtime < time.time() - keep_seconds:
                old.unlink()
    return str(path)


def private_upload_folder() -> Path:
    """The web framework's upload cache for this server alone: $GRADIO_TEMP_DIR when it is set, else a new temporary
    folder only this user can read, set as GRADIO_TEMP_DIR and removed at exit. Gradio's default, /tmp/gradio, is
    shared by every Gradio app on the machine: the upload check would accept another app's uploads, and each app's
    shutdown would delete files the others still serve.

    Call it before the components are made: they, the upload route and Gradio's own path check read the variable when
    they run. Two of Gradio's extras read it once, at import (the screen-recording route, which deletes what it writes
    after each response, and an empty edit-history folder): they keep using /tmp/gradio unless GRADIO_TEMP_DIR is set
    before gradio is imported, as a Space or container can."""
    if configured := os.environ.get("GRADIO_TEMP_DIR"):
        return Path(configured)
    folder = Path(tempfile.mkdtemp(prefix="skin-fusion-uploads-"))
    os.environ["GRADIO_TEMP_DIR"] = str(folder)
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    return folder


def settle_server_memory() -> None:
    """Process-wide memory settings for a long-running server, made once after the model is loaded: the objects that
    live as long as the process leave the cycle collector's view (a full collection then takes ~50 ms, not ~500 ms),
    and large freed blocks go back to the system (glibc only; elsewhere a no-op)."""
    gc.freeze()
    with contextlib.suppress(OSError, AttributeError):  # no glibc
        ctypes.CDLL("libc.so.6").mallopt(M_MMAP_THRESHOLD, LARGE_BLOCK_BYTES)
