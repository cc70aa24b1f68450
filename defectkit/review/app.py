"""The review web app (Starlette): JSON API over a work dir, the page in ``static/``, images re-encoded.

Security model:

- Only files of the run are served: images are looked up by id among the run's prediction lines
  (or the uploads), decoded with the hardened decoder and re-encoded as JPEG, so a URL never names
  a path and a listed file that is not an image serves nothing. ``/files/...`` (report, plots,
  overlays) resolves inside the work dir only; anything resolving outside it (``..``, symlinks)
  or hidden is a 404.
- On a loopback address the Host header must be a loopback name (no DNS rebinding). On any other
  address every request needs the token the command prints (query ``?token=``, then a cookie).
- Changing requests need the ``X-Review`` header, which a cross-site form cannot send.
- Uploads are size-capped while they stream in and decoded like a batch run's inputs.
"""

from __future__ import annotations

import functools
import io
import re
import secrets
import threading
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from PIL import Image
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, PlainTextResponse, RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Receive, Scope, Send

from defectkit.errors import DataError, DefectkitError
from defectkit.io.atomic import atomic_write_bytes
from defectkit.io.images import read_image
from defectkit.review.export import export_review
from defectkit.review.run_data import (
    Item,
    confident_instances,
    ground_truth_data_root,
    ground_truth_shapes,
    load_ground_truth,
    load_items,
    read_run_info,
)
from defectkit.review.store import DECISIONS_FILE, DecisionStore, ReviewError, is_reviewed

STATIC_DIR = Path(__file__).parent / "static"
REVIEW_DIR = "review"
UPLOAD_DIR = "uploads"
DEFAULT_MAX_UPLOAD_BYTES = 20 * 1024 * 1024
TOKEN_COOKIE = "defectkit_review_token"
LOOPBACK_HOSTS = ["127.0.0.1", "localhost", "::1"]
# Photos are sent at most this large: enough to review on any screen, small enough to load fast.
VIEW_MAX_SIDE = 2048
THUMB_MAX_SIDE = 256
_UPLOAD_ID = re.compile(r"^[0-9a-f]{32}$")


class ReviewState:
    """The run being reviewed: items (re-read when ``predictions.jsonl`` changes), decisions,
    ground truth and, on first use, the fitted pipeline for uploads.

    Args:
        work_dir: The run's folder (``predictions.jsonl`` and ``weights/``).
        config_path: The run's config; None uses ``run_info.json``'s when that file exists.
        cfg_options: ``--cfg-options`` of the run, so the reader and pipeline match it.
        data_root: The evaluated data root, when it is not the one the run recorded.
        max_upload_bytes: Largest accepted upload.
    """

    def __init__(
        self,
        work_dir: str | Path,
        config_path: str | None = None,
        cfg_options: dict[str, Any] | None = None,
        data_root: str | None = None,
        max_upload_bytes: int = DEFAULT_MAX_UPLOAD_BYTES,
    ) -> None:
        self.work_dir = Path(work_dir).resolve()
        if not self.work_dir.is_dir():
            raise DataError(f"{work_dir}: not a folder")
        self.run_info = read_run_info(self.work_dir)
        self.max_upload_bytes = int(max_upload_bytes)
        self._lock = threading.Lock()
        self._items_mtime: float | None = None
        self._items: list[Item] = []
        self._by_id: dict[str, Item] = {}
        self.reload_items()
        self.cfg: Any = None
        self.config_path = config_path or self.run_info.get("config")
        self.config_note = ""
        if self.config_path and Path(self.config_path).is_file():
            from defectkit.config import load_config

            try:
                self.cfg = load_config(self.config_path, dict(cfg_options or {}))
            except DefectkitError as exc:
                self.config_note = f"config {self.config_path}: {exc}"
        else:
            self.config_note = (
                f"config {self.config_path} not found; start with --config CONFIG" if self.config_path
                else "no config known for this work dir; start with --config CONFIG"
            )
        if self.cfg is not None and self.cfg.get("classes"):
            self.classes = [str(c) for c in self.cfg.classes]
        else:
            self.classes = sorted({c for item in self._items for c in item.classes})
        self.store = DecisionStore(self.work_dir / REVIEW_DIR / DECISIONS_FILE, self.classes)
        self.data_root = ground_truth_data_root(self.work_dir, self.run_info, data_root)
        self._gt: dict[str, Any] | None = None
        self.gt_note = ""
        self._runner: Any = None
        self._pipeline_lock = threading.Lock()

    # ----------------------------------------------------------------------------------- items
    def reload_items(self) -> None:
        """Re-read ``predictions.jsonl`` when it changed (a run may still be appending)."""
        path = self.work_dir / "predictions.jsonl"
        mtime = path.stat().st_mtime if path.exists() else None
        with self._lock:
            if mtime is not None and mtime == self._items_mtime:
                return
            items = load_items(self.work_dir)
            self._items, self._by_id, self._items_mtime = items, {i.id: i for i in items}, mtime

    @property
    def items(self) -> list[Item]:
        return self._items

    def item(self, item_id: str) -> Item | None:
        return self._by_id.get(item_id)

    @property
    def is_evaluation(self) -> bool:
        return (self.run_info.get("stamp") or {}).get("mode") == "eval"

    def ground_truth(self, item: Item) -> list[dict[str, Any]] | None:
        """The item's ground-truth shapes, or None when the run was no evaluation or its reader fails."""
        if not self.is_evaluation or self.cfg is None:
            if not self.gt_note:
                self.gt_note = "not an evaluation run" if not self.is_evaluation else self.config_note
            return None
        with self._lock:
            if self._gt is None:
                try:
                    self._gt = load_ground_truth(self.cfg, str(self.config_path), self.work_dir, self.data_root, [i.path for i in self._items])
                except DefectkitError as exc:
                    self._gt, self.gt_note = {}, f"ground truth unavailable: {exc}"
        record = self._gt.get(item.path)
        return None if record is None else ground_truth_shapes(record, self.classes)

    def summary(self, item: Item, entry: dict[str, Any] | None = None) -> dict[str, Any]:
        """What the grid shows of an item (``entry``: its decisions, when already at hand)."""
        entry = self.store.get(item.path) if entry is None else entry
        return {
            "id": item.id,
            "name": item.name,
            "status": item.status,
            "gate": item.gate_label,
            "score": item.score,
            "n": len(item.instances),
            "classes": item.classes,
            "reviewed": is_reviewed(entry, len(item.instances)),
            "error": item.line.get("error"),
        }

    # ---------------------------------------------------------------------------------- upload
    def upload_status(self) -> tuple[bool, str]:
        """Whether uploads can be predicted, and why not."""
        if self.cfg is None:
            return False, self.config_note
        if not (self.work_dir / "weights").is_dir():
            return False, f"{self.work_dir} has no weights/ folder (train or run there first)"
        return True, ""

    def predict_upload(self, path: Path) -> dict[str, Any]:
        """Run the fitted pipeline on one uploaded file (the runner is built on first use)."""
        with self._pipeline_lock:
            if self._runner is None:
                from defectkit.runner import Runner

                self._runner = Runner(self.cfg, str(self.config_path), work_dir=str(self.work_dir))
            prediction = self._runner.predict_files([str(path)])[0].to_prediction()
        # Reviewers see what the overlays show: not a detector's boxes under its review threshold.
        if "instances" in prediction:
            prediction["instances"] = confident_instances(prediction)
        return prediction


# ------------------------------------------------------------------------------- middleware
class TokenMiddleware:
    """Every request must carry the token (query, cookie or ``X-Review-Token`` header)."""

    def __init__(self, app: ASGIApp, token: str) -> None:
        self.app = app
        self.token = token

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request = Request(scope)
        given = request.query_params.get("token")
        if given is not None and _same(given, self.token):
            # Trade the URL token for a cookie, so the page's own requests need no token in them.
            response: Response = RedirectResponse(request.url.remove_query_params("token"), status_code=303)
            response.set_cookie(TOKEN_COOKIE, self.token, httponly=True, samesite="strict")
            await response(scope, receive, send)
            return
        candidate = request.cookies.get(TOKEN_COOKIE) or request.headers.get("x-review-token") or ""
        if _same(candidate, self.token):
            await self.app(scope, receive, send)
            return
        await PlainTextResponse("token required: open the URL the review command printed", status_code=401)(scope, receive, send)


def _same(given: str, token: str) -> bool:
    # Bytes: compare_digest refuses non-ASCII str, and a stray character must be a 401, not a 500.
    return secrets.compare_digest(given.encode("utf-8", "replace"), token.encode("utf-8"))


class HostGuardMiddleware:
    """Refuse a Host header outside ``allowed`` (``"*"`` allows any): a page on another site that
    re-points its own name at 127.0.0.1 (DNS rebinding) still sends its own name."""

    def __init__(self, app: ASGIApp, allowed: list[str]) -> None:
        self.app = app
        self.allowed = {h.lower() for h in allowed}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and "*" not in self.allowed and host_name(Request(scope).headers.get("host", "")) not in self.allowed:
            await PlainTextResponse("invalid host header", status_code=400)(scope, receive, send)
            return
        await self.app(scope, receive, send)


def host_name(header: str) -> str:
    """The name in a Host header, without the port (``[::1]:8000`` -> ``::1``)."""
    header = header.strip().lower()
    if header.startswith("["):
        return header[1 : header.find("]")] if "]" in header else header
    return header.rsplit(":", 1)[0] if header.count(":") == 1 else header


class WriteGuardMiddleware:
    """Changing requests need the ``X-Review`` header: a cross-site page cannot send it without CORS."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] not in ("GET", "HEAD"):
            if not Request(scope).headers.get("x-review"):
                await PlainTextResponse("missing X-Review header", status_code=403)(scope, receive, send)
                return
        await self.app(scope, receive, send)


# ------------------------------------------------------------------------------------- app
def create_app(state: ReviewState, token: str | None = None, allowed_hosts: list[str] | None = None) -> Starlette:
    """The Starlette app over ``state``.

    Args:
        state: The run under review.
        token: When set, every request must carry it (see :class:`TokenMiddleware`).
        allowed_hosts: Host header values accepted (None: loopback names only; ``["*"]``: any).
    """

    def error(message: str, status: int = 400) -> JSONResponse:
        return JSONResponse({"error": message}, status_code=status)

    def get_item(request: Request) -> Item | None:
        return state.item(request.path_params["item_id"])

    async def index(request: Request) -> Response:
        return FileResponse(STATIC_DIR / "index.html", headers={"Cache-Control": "no-store"})

    async def summary(request: Request) -> Response:
        await run_in_threadpool(state.reload_items)
        items = state.items
        upload_ok, upload_note = state.upload_status()
        decisions = state.store.all()
        reviewed = sum(1 for i in items if is_reviewed(decisions.get(i.path, {}), len(i.instances)))
        return JSONResponse(
            {
                "work_dir": state.work_dir.name,
                "mode": (state.run_info.get("stamp") or {}).get("mode"),
                "evaluation": state.is_evaluation,
                "n_images": len(items),
                "n_reviewed": reviewed,
                "classes": state.classes,
                "gate_labels": sorted({str(i.gate_label) for i in items if i.gate_label is not None}),
                "report": (state.work_dir / "report.html").is_file(),
                "upload": {"available": upload_ok, "note": upload_note, "max_bytes": state.max_upload_bytes},
                "config_note": state.config_note,
            }
        )

    async def list_items(request: Request) -> Response:
        await run_in_threadpool(state.reload_items)
        query = request.query_params
        try:
            low = float(query["min_score"]) if query.get("min_score") else None
            high = float(query["max_score"]) if query.get("max_score") else None
        except ValueError:
            return error("min_score and max_score must be numbers")
        rows = []
        decisions = state.store.all()
        for item in state.items:
            if query.get("status") and item.status != query["status"]:
                continue
            if query.get("gate") and str(item.gate_label) != query["gate"]:
                continue
            if query.get("cls") and query["cls"] not in item.classes:
                continue
            score = item.score
            if (low is not None or high is not None) and score is None:
                continue
            if score is not None and (low is not None and score < low or high is not None and score > high):
                continue
            row = state.summary(item, decisions.get(item.path, {}))
            if query.get("review") and (query["review"] == "reviewed") != row["reviewed"]:
                continue
            rows.append(row)
        sort = query.get("sort", "score_desc")
        if sort in ("score_desc", "score_asc"):
            sign = -1.0 if sort == "score_desc" else 1.0
            rows.sort(key=lambda r: (r["score"] is None, sign * (r["score"] or 0.0)))
        elif sort == "name":
            rows.sort(key=lambda r: r["name"])
        return JSONResponse({"total": len(rows), "items": rows})

    async def get_item_detail(request: Request) -> Response:
        item = get_item(request)
        if item is None:
            return error("no such image", 404)
        gt = await run_in_threadpool(state.ground_truth, item)
        entry = state.store.get(item.path)
        return JSONResponse(
            {
                **state.summary(item),
                "path": item.path,
                "width": item.line.get("width"),
                "height": item.line.get("height"),
                "instances": item.instances,
                "decisions": entry,
                "ground_truth": gt,
                "ground_truth_note": state.gt_note if gt is None else "",
            }
        )

    @functools.lru_cache(maxsize=1024)
    def encoded(path: str, mtime: float, max_side: int) -> bytes:
        decoded = read_image(path, max_side=max_side)
        buffer = io.BytesIO()
        Image.fromarray(decoded.image).save(buffer, format="JPEG", quality=85)
        return buffer.getvalue()

    async def send_image(path: Path, request: Request) -> Response:
        max_side = THUMB_MAX_SIDE if request.query_params.get("size") == "thumb" else VIEW_MAX_SIDE
        try:
            data = await run_in_threadpool(encoded, str(path), path.stat().st_mtime, max_side)
        except (OSError, DataError):
            return error("image cannot be read", 404)
        return Response(data, media_type="image/jpeg", headers={"Cache-Control": "private, max-age=300"})

    async def item_image(request: Request) -> Response:
        item = get_item(request)
        if item is None or item.status != "ok":
            return error("no such image", 404)
        return await send_image(Path(item.path), request)

    async def read_json(request: Request) -> dict[str, Any]:
        try:
            body = await request.json()
        except ValueError as exc:
            raise ReviewError("request body is not JSON") from exc
        if not isinstance(body, dict):
            raise ReviewError("request body must be a JSON object")
        return body

    async def change(request: Request, apply: Callable[[Item, dict[str, Any]], dict[str, Any]]) -> Response:
        item = get_item(request)
        if item is None or item.status != "ok":
            return error("no such image", 404)
        try:
            body = await read_json(request)
            entry = await run_in_threadpool(apply, item, body)
        except ReviewError as exc:
            return error(str(exc))
        return JSONResponse({"decisions": entry, "reviewed": is_reviewed(entry, len(item.instances))})

    async def decide(request: Request) -> Response:
        def apply(item: Item, body: dict[str, Any]) -> dict[str, Any]:
            try:
                index = int(request.path_params["index"])
            except ValueError as exc:
                raise ReviewError("instance index must be a number") from exc
            if index >= len(item.instances):
                raise ReviewError(f"image has {len(item.instances)} instances; no instance {index}")
            return state.store.decide(item.path, index, body.get("decision"), body.get("class"))

        return await change(request, apply)

    async def add_region(request: Request) -> Response:
        return await change(request, lambda item, body: state.store.add_region(item.path, str(body.get("class")), body.get("polygon"), body.get("box")))

    async def remove_region(request: Request) -> Response:
        return await change(request, lambda item, body: state.store.remove_region(item.path, request.path_params["region_id"]))

    async def set_done(request: Request) -> Response:
        return await change(request, lambda item, body: state.store.set_done(item.path, bool(body.get("done", True))))

    async def export(request: Request) -> Response:
        await run_in_threadpool(state.reload_items)
        try:
            result = await run_in_threadpool(export_review, state.work_dir, state.items, state.store.all(), state.classes)
        except DefectkitError as exc:
            return error(str(exc), 500)
        return JSONResponse(result)

    async def upload(request: Request) -> Response:
        length = request.headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > state.max_upload_bytes:
            return error(f"file larger than {state.max_upload_bytes} bytes", 413)
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > state.max_upload_bytes:
                return error(f"file larger than {state.max_upload_bytes} bytes", 413)
            chunks.append(chunk)
        if size == 0:
            return error("empty upload")
        upload_id = uuid.uuid4().hex
        path = state.work_dir / REVIEW_DIR / UPLOAD_DIR / f"{upload_id}.upload"
        await run_in_threadpool(atomic_write_bytes, path, b"".join(chunks))
        name = Path(request.headers.get("x-filename", "upload")).name[:200]
        try:
            # The batch run's decoder: pixel cap on the header, corrupt files become one clear line.
            decoded = await run_in_threadpool(read_image, path)
        except DataError as exc:
            path.unlink(missing_ok=True)
            return error(str(exc).replace(str(path), name), 422)
        height, width = decoded.original_size
        result: dict[str, Any] = {"id": upload_id, "name": name, "width": width, "height": height, "prediction": None}
        available, note = state.upload_status()
        if not available:
            result["note"] = f"decoded, but no prediction: {note}"
            return JSONResponse(result)
        try:
            prediction = await run_in_threadpool(state.predict_upload, path)
        except (DefectkitError, RuntimeError, ValueError, OSError) as exc:
            # Weights that do not fit the config (e.g. other --cfg-options) fail inside torch.
            result["note"] = f"decoded, but the pipeline failed: {type(exc).__name__}: {exc}"
            return JSONResponse(result)
        if prediction.get("error"):
            return error(str(prediction["error"]).replace(str(path), name), 422)
        prediction["path"] = name
        result["prediction"] = prediction
        return JSONResponse(result)

    async def upload_image(request: Request) -> Response:
        upload_id = request.path_params["upload_id"]
        path = state.work_dir / REVIEW_DIR / UPLOAD_DIR / f"{upload_id}.upload"
        if not _UPLOAD_ID.match(upload_id) or not path.is_file():
            return error("no such upload", 404)
        return await send_image(path, request)

    async def run_file(request: Request) -> Response:
        target = resolve_inside(state.work_dir, request.path_params["path"])
        if target is None:
            return PlainTextResponse("not found", status_code=404)
        return FileResponse(target)

    routes = [
        Route("/", index),
        Route("/api/summary", summary),
        Route("/api/items", list_items),
        Route("/api/items/{item_id}", get_item_detail),
        Route("/api/items/{item_id}/image", item_image),
        Route("/api/items/{item_id}/instances/{index}", decide, methods=["POST"]),
        Route("/api/items/{item_id}/regions", add_region, methods=["POST"]),
        Route("/api/items/{item_id}/regions/{region_id}", remove_region, methods=["DELETE"]),
        Route("/api/items/{item_id}/done", set_done, methods=["POST"]),
        Route("/api/export", export, methods=["POST"]),
        Route("/api/upload", upload, methods=["POST"]),
        Route("/api/uploads/{upload_id}/image", upload_image),
        Route("/files/{path:path}", run_file),
        Mount("/static", StaticFiles(directory=STATIC_DIR), name="static"),
    ]
    middleware = [Middleware(HostGuardMiddleware, allowed=allowed_hosts or LOOPBACK_HOSTS)]
    if token:
        middleware.append(Middleware(TokenMiddleware, token=token))
    middleware.append(Middleware(WriteGuardMiddleware))
    return Starlette(routes=routes, middleware=middleware)


def resolve_inside(root: Path, relative: str) -> Path | None:
    """``root/relative`` when it is an existing, non-hidden file inside ``root`` after resolving links; else None."""
    if not relative or "\x00" in relative:
        return None
    parts = Path(relative).parts
    if Path(relative).is_absolute() or any(p == ".." or p.startswith(".") for p in parts):
        return None
    try:
        target = (root / relative).resolve()
    except (OSError, RuntimeError):
        return None
    if not target.is_relative_to(root.resolve()) or not target.is_file():
        return None
    return target
