"""Tenants and run ids: a run id is chosen per tenant, and the store keys a run by both.

Two tenants may each start a run called `incident-42`; neither learns that the other did. The
store's key of a run (`af_runs.id`, and `run_id` in every table under it) is the run id for the
default tenant, and `<tenant>:<run id>` for any other, so a query by key is already confined to
one tenant and a key can never be guessed across tenants by choosing a run id. Run ids and
tenant names may not contain `:`; run ids may not contain `/` either (`<parent>/<seq>` names
child runs, which belong to their parent's tenant).

Surfaces that act for one tenant (the server, chat) turn what a caller typed into a key with
`scoped_key` (a local id, or a key of the caller's own tenant; anything else is `None`: not
found) and show `local_id`; library and CLI callers that act on the whole store use keys.
"""

from __future__ import annotations

import re

from agentflow.errors import ConfigurationError

#: The tenant of runs started without one (a single-team deployment). Surfaces that act for an
#: operator always pass the operator's tenant.
DEFAULT_TENANT = "default"
SEPARATOR = ":"
_TENANT = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_RUN_ID = re.compile(r"[A-Za-z0-9._-]{1,200}")


def check_tenant(tenant: str) -> str:
    """`tenant` if it is a valid tenant name, else a ConfigurationError saying what is."""
    return _checked(tenant, _TENANT, "tenant {!r} is not a valid tenant name: use 1-64 letters, digits, '.', "
                    "'_' or '-', starting with a letter or digit (e.g. noc-east)")  # fmt: skip


def check_run_id(run_id: str) -> str:
    """`run_id` if a caller may choose it, else a ConfigurationError saying what is allowed."""
    return _checked(run_id, _RUN_ID, "run id {!r} is not allowed: use 1-200 letters, digits, '.', '_' or '-' "
                    "(':' and '/' are reserved: they qualify a run by its tenant and name child runs)")  # fmt: skip


def _checked(value: str, pattern: re.Pattern[str], message: str) -> str:
    if not isinstance(value, str) or not pattern.fullmatch(value):
        raise ConfigurationError(message.format(value))
    return value


def run_key(tenant: str, run_id: str) -> str:
    """The store's key of run `run_id` of `tenant` (both already checked)."""
    return run_id if tenant == DEFAULT_TENANT else f"{tenant}{SEPARATOR}{run_id}"


def scoped_key(tenant: str, given: str) -> str | None:
    """The key of the run a caller acting for `tenant` names with `given` (its local id, or its
    full key), or None when `given` cannot name a run of that tenant (another tenant's key, a
    malformed id): such a caller is told "not found", exactly as for an id nobody used."""
    prefix = tenant + SEPARATOR
    local = given[len(prefix) :] if given.startswith(prefix) else given
    root = local.split("/", 1)[0]
    if SEPARATOR in local or not _RUN_ID.fullmatch(root):
        return None
    return run_key(tenant, local)


def local_id(key: str, tenant: str) -> str:
    """What the operators of `tenant` call the run keyed `key` (the key without its tenant)."""
    prefix = tenant + SEPARATOR
    return key[len(prefix) :] if tenant != DEFAULT_TENANT and key.startswith(prefix) else key
