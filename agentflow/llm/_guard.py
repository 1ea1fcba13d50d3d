"""A guard so that tests cannot reach a real model by accident.

With `AGENTFLOW_ALLOW_MODEL_REQUESTS=0` (the test suite sets it), a request to any endpoint that is
not on this machine's loopback raises `ModelRequestsForbidden` before anything is sent. Local test
servers on 127.0.0.1 stay reachable: they are how the real `openai` client is tested.
"""

from __future__ import annotations

import ipaddress
import os
from urllib.parse import urlparse

from agentflow.errors import ModelRequestsForbidden

ENV = "AGENTFLOW_ALLOW_MODEL_REQUESTS"


def model_requests_allowed() -> bool:
    return os.environ.get(ENV, "1").strip().lower() not in ("0", "false", "no", "off")


def is_loopback(url: str) -> bool:
    host = urlparse(url).hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_endpoint(url: str, model: str) -> None:
    if not model_requests_allowed() and not is_loopback(url):
        raise ModelRequestsForbidden(
            f"model requests are disabled ({ENV}=0) and {model!r} would call {url}: tests must "
            "use an offline model or a local test server; set the variable to 1 to allow it",
        )
