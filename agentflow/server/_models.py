"""Request bodies of the JSON API (validated by FastAPI; a bad body is a 422 naming the field)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")  # a misspelt field is an error, not silently ignored


class SessionBody(_Body):
    token: str = Field(min_length=1, max_length=200, description="An operator token (`agentflow operators add`).")
    tenant: str | None = Field(default=None, max_length=200, description="The token's tenant, to check it.")


class TenantBody(_Body):
    tenant: str = Field(min_length=1, max_length=200)


class StartBody(_Body):
    task: str = Field(min_length=1, max_length=4000, description="What the copilot should do.")
    run_id: str | None = Field(
        default=None, min_length=1, max_length=200, pattern=r"^[A-Za-z0-9._-]+$",
        description="An id of your choosing, unique in your tenant (another tenant may use the same).",
    )  # fmt: skip


class ChatBody(_Body):
    text: str = Field(min_length=1, max_length=4000)


class ApproveBody(_Body):
    comment: str = Field(default="", max_length=2000)
    args: dict[str, Any] | None = Field(default=None, description="Edited arguments (only the rule's editable ones).")
    seen_hash: str | None = Field(default=None, max_length=128, description="`args_hash` of the card you saw.")


class RejectBody(_Body):
    comment: str = Field(min_length=1, max_length=2000, description="Why (the model and the audit trail see it).")
