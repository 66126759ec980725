"""The dashboard web app (FastAPI): the tablet page, its static files and the JSON API.

ROS-free: everything live comes from a `backend` object (the ROS node implements it, tests
may use the node or a stub), and history comes from the session log folder. The page polls
`/api/state` and `/api/live` and asks for `/api/frame.jpg` only while it is shown, so the
backend knows when someone is watching.

Access: without a token (the default, for 127.0.0.1) every request is served. With a token
(required when binding to another interface) a request must carry it as `?token=`, the
`X-Dashboard-Token` header or the cookie the page gets when opened with `?token=`.
"""

from __future__ import annotations

import secrets
from pathlib import Path
from urllib.parse import urlsplit
from typing import Literal, Optional, Protocol

from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, ConfigDict, Field, field_validator

from fer_ros import LABELS
from fer_ros.dashboard.sessions import list_sessions, timeline_path

STATIC = Path(__file__).resolve().parent / "static"
VERBS = ("start", "pause", "resume", "skip", "stop")
TOKEN_COOKIE = "fer_dashboard_token"
TOKEN_HEADER = "X-Dashboard-Token"
MAX_BODY_BYTES = 4096  # every request body is a small JSON object
MAX_TRIALS_PER_EMOTION = 100  # the therapy node's own range for the trial counts
LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")

Label = Literal[LABELS]  # type: ignore[valid-type]


class Backend(Protocol):
    """What the app needs from the running system (implemented by the dashboard node)."""

    log_dir: str

    def state(self) -> dict: ...  # TherapyState fields (+ "received": bool)
    def live(self) -> dict: ...  # {"expression": {...} | None, "alerts": [...], "therapy_node": bool}
    def settings(self) -> dict: ...  # the therapy node's current session settings
    def command(self, verb: str, settings: Optional[dict]) -> tuple[bool, str]: ...
    def answer(self, label: str) -> tuple[bool, str]: ...
    def frame(self) -> Optional[bytes]: ...  # latest annotated image as JPEG; marks a watcher


class StartSettings(BaseModel):
    """The pre-start form; fields left out keep the therapy node's current values."""

    model_config = ConfigDict(extra="forbid")
    child_name: Optional[str] = Field(None, max_length=40, pattern=r"^[^\x00-\x1f<>{}\\]*$")
    emotions: Optional[list[Label]] = Field(None, min_length=1, max_length=len(LABELS))
    teaching_trials_per_emotion: Optional[int] = Field(None, ge=0, le=MAX_TRIALS_PER_EMOTION)
    practice_trials_per_emotion: Optional[int] = Field(None, ge=0, le=MAX_TRIALS_PER_EMOTION)

    @field_validator("emotions")
    @classmethod
    def _unique(cls, v):
        if v is not None and len(set(v)) != len(v):
            raise ValueError("emotions must not repeat")
        return v

    @field_validator("child_name")
    @classmethod
    def _strip(cls, v):
        return v.strip() if v is not None else v


class AnswerIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    answer: Label


def is_local(host: str) -> bool:
    return host in LOCAL_HOSTS


def create_app(backend: Backend, token: str = "", frame_interval: float = 0.33) -> FastAPI:
    """The app; `token` non-empty = every request must carry it. `frame_interval` is how often
    the page asks for a new camera frame while it is shown (seconds)."""
    app = FastAPI(title="fer_ros therapy dashboard", docs_url=None, redoc_url=None, openapi_url=None)

    @app.middleware("http")
    async def guard(request: Request, call_next):
        if request.method in ("POST", "PUT", "PATCH"):
            length = request.headers.get("content-length")
            if length is None or not length.isdigit() or int(length) > MAX_BODY_BYTES:
                return JSONResponse({"detail": f"request body missing or over {MAX_BODY_BYTES} bytes"}, 413)
            # Another web site open in the tablet's browser must not drive the session: a
            # cross-site page cannot send a JSON body without a CORS preflight, which this app
            # never grants, and the browser names it in Origin.
            if request.headers.get("content-type", "").split(";")[0].strip() != "application/json":
                return JSONResponse({"detail": "send the body as application/json"}, 415)
            origin = request.headers.get("origin")
            if origin is not None and urlsplit(origin).netloc != request.headers.get("host"):
                return JSONResponse({"detail": f"cross-site request from {origin[:100]} refused"}, 403)
        if not token and urlsplit("//" + request.headers.get("host", "")).hostname not in LOCAL_HOSTS:
            # served on 127.0.0.1 without a token: a site whose name resolves to 127.0.0.1
            # (DNS rebinding) would otherwise count as this page's own origin
            return JSONResponse({"detail": "use http://127.0.0.1:<port>/ (or localhost)"}, 421)
        if token:
            given = (request.query_params.get("token") or request.headers.get(TOKEN_HEADER)
                     or request.cookies.get(TOKEN_COOKIE) or "")
            if not secrets.compare_digest(given.encode(), token.encode()):
                return JSONResponse({"detail": "access token missing or wrong"}, 401)
        response = await call_next(request)
        if token and request.query_params.get("token"):
            response.set_cookie(TOKEN_COOKIE, token, httponly=True, samesite="strict")
        response.headers["Cache-Control"] = "no-store"
        return response

    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    @app.get("/", include_in_schema=False)
    def index():
        return FileResponse(STATIC / "index.html")

    @app.get("/api/config")
    def config():
        return {"labels": list(LABELS), "verbs": list(VERBS), "frame_interval": frame_interval,
                "max_trials_per_emotion": MAX_TRIALS_PER_EMOTION, "settings": backend.settings()}

    @app.get("/api/state")
    def state():
        return backend.state()

    @app.get("/api/live")
    def live():
        return backend.live()

    @app.post("/api/command/{verb}")
    def command(verb: Literal[VERBS], settings: Optional[StartSettings] = None):  # type: ignore[valid-type]
        values = settings.model_dump(exclude_none=True) if settings is not None else {}
        if values and verb != "start":
            raise HTTPException(422, f"settings are only accepted with start, not {verb}")
        try:
            ok, message = backend.command(verb, values or None)
        except TimeoutError as exc:
            raise HTTPException(503, str(exc))
        return {"success": bool(ok), "message": str(message)}

    @app.post("/api/answer")
    def answer(body: AnswerIn):
        try:
            ok, message = backend.answer(body.answer)
        except TimeoutError as exc:
            raise HTTPException(503, str(exc))
        return {"success": bool(ok), "message": str(message)}

    @app.get("/api/frame.jpg")
    def frame():
        jpeg = backend.frame()
        if jpeg is None:
            return Response(status_code=204)
        return Response(jpeg, media_type="image/jpeg")

    @app.get("/api/sessions")
    def sessions():
        return {"log_dir": str(backend.log_dir), "sessions": list_sessions(backend.log_dir)}

    @app.get("/api/sessions/{session_id}/timeline.png")
    def timeline(session_id: str):
        path = timeline_path(backend.log_dir, session_id)
        if path is None:
            raise HTTPException(404, "no such session timeline")
        return FileResponse(path, media_type="image/png")

    return app
