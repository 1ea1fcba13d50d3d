"""Errors answered as JSON: `{"error": {"code", "message", ...}}` with the status of API.md's table."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from agentflow.errors import AgentflowError, ApprovalError, AuthenticationError, ConfigurationError, UnknownRunError
from agentflow.server._auth import ApiError
from agentflow.store import RedactingFilter, Redaction

log = logging.getLogger("agentflow.server")
log.addFilter(RedactingFilter())
_STATUS = {  # ApprovalError.code -> HTTP status
    "bad_token": 401, "not_signed_in": 401, "session_expired": 401, "csrf": 403, "wrong_tenant": 403,
    "missing_role": 403, "self_approval": 403, "unknown": 404, "unknown_run": 404, "already_decided": 409, "run_ended": 409,
    "stale_args": 409, "run_exists": 409, "expired": 410, "not_editable": 422, "invalid": 422, "ambiguous": 400,
}  # fmt: skip


def _error(status: int, code: str, message: str, **extra: Any) -> JSONResponse:
    # An error message may quote what a caller sent or a store said: secrets are masked in it.
    return JSONResponse(
        {"error": {"code": code, "message": Redaction.current().text(message), **extra}}, status_code=status
    )


def install_error_handlers(api: FastAPI) -> None:
    @api.exception_handler(ApiError)
    async def api_error(_: Request, exc: ApiError) -> JSONResponse:
        answer = _error(exc.status, exc.code, exc.message, **exc.extra)
        answer.headers.update(exc.headers)
        return answer

    @api.exception_handler(ApprovalError)
    async def approval_error(_: Request, exc: ApprovalError) -> JSONResponse:
        extra = {"approval_id": exc.approval_id} if exc.approval_id else {}
        # Every refused token is a 401 (bad_token, token_revoked, token_expired, operator_disabled).
        status = 401 if isinstance(exc, AuthenticationError) else _STATUS.get(exc.code, 403)
        return _error(status, exc.code, exc.message, **extra)

    @api.exception_handler(UnknownRunError)
    async def unknown_run(_: Request, exc: UnknownRunError) -> JSONResponse:
        return _error(404, "unknown_run", exc.message)

    @api.exception_handler(ConfigurationError)
    async def bad_input(_: Request, exc: ConfigurationError) -> JSONResponse:
        return _error(422, "invalid", exc.message)

    @api.exception_handler(RequestValidationError)
    async def invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        errors = list(exc.errors())
        details = [{"loc": [str(p) for p in e.get("loc", ())], "msg": str(e.get("msg", ""))} for e in errors]
        if any(e.get("type") == "json_invalid" for e in errors):
            return _error(400, "bad_request", "the body is not valid JSON", details=details)
        loc, msg = (details[0]["loc"], details[0]["msg"]) if details else ([], "invalid")
        if loc == ["body"]:
            msg = "the body must be a JSON object, sent with Content-Type: application/json"
        where = ".".join(p for p in loc if p != "body")
        return _error(422, "invalid", f"{where}: {msg}" if where else str(msg), details=details)

    @api.exception_handler(StarletteHTTPException)
    async def http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = {400: "bad_request", 404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        return _error(exc.status_code, code, str(exc.detail))

    @api.exception_handler(AgentflowError)
    async def store_error(_: Request, exc: AgentflowError) -> JSONResponse:
        # Store trouble (busy, corrupt record) is the server's, not the caller's: 503, retryable.
        log.warning("request failed: %s", exc)
        return _error(503, type(exc).__name__, exc.message, retryable=exc.retryable)
