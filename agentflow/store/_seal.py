"""Encryption at rest: the payload columns of chosen tenants sealed with AES-GCM, keys from
configuration, rotation with old keys kept for opening.

Turning it on
    `AGENTFLOW_ENCRYPTION_KEYS="k2:<base64 key>,k1:<base64 key>"`: the first key seals new
    payloads, the others only open what they sealed. `AGENTFLOW_ENCRYPTION_TENANTS="acme,noc-east"`
    seals only those tenants (default: every tenant). In code: `Sealing(keys={...}, active=...,
    tenants=...)` passed as `sealing=` to `EventStore`, `App` or `Client`. A key is 16, 24 or 32
    random bytes (AES-128/192/256); `python -c "import os,base64;print(base64.b64encode(os.urandom(32)).decode())"`
    prints one.

What is sealed, and what stays in clear
    Sealed, in the rows of a sealed tenant: run input, output, error and meta; step arguments,
    results and errors; failed attempts' errors; signal payloads; message blobs; approval
    requests' arguments and preview diffs; vote comments; audit reasons (they quote comments);
    the text of a chat card (it quotes arguments and comments); the body of an event for
    webhooks (it quotes arguments and comments), a webhook's URL and its signing secret.
    In clear, because queries filter, join, count or lock on them: ids, tenant, status, names
    (workflow, step, tool, signal, operator), kinds, times, epochs, the argument digests
    (`af_steps.digest`, `af_approvals.args_hash`: the replay check and the approval binding
    compare them), policy usage (tool, target, region: rate and blast-radius limits count them),
    principals, sessions and settings. A digest shows that two calls had equal arguments, and
    whoever can guess a call's arguments can confirm the guess against it.

The envelope
    `af:enc:1:<key id>:<base64url(nonce | ciphertext | tag)>`: a format version, the id of the key
    that sealed it (a rotated store still knows which key opens each value) and a random 96-bit
    nonce per value. The associated data binds the value to where it lives: the table and
    column, the tenant and the row's ids (the run; the step's seq; the attempt; the approval; ...).
    A value copied to another column, run, step or tenant does not open: the GCM tag fails. That
    is a `StoreKeyError`, like a wrong key (the two cannot be told apart), never a wrong answer.

Blobs (content-addressed messages, stored once)
    A step refers to its messages by the truncated SHA-256 of their JSON, and `af_blobs` is
    keyed by that hash, shared by every run. A sealed tenant's message is stored under a
    *locator* instead: `~<key id>~` and HMAC-SHA256 of the hash under a key derived from that
    encryption key (128 bits, hex), its data sealed with the locator as associated data. So the
    plain hash of a sealed message is never in the database (a guessed message cannot be
    confirmed by hashing it, and the locators of two stores or two keys are unrelated); a
    clear tenant's message stays under its plain hash, readable by whoever reads that tenant;
    and a sealed row only ever opens with the store's keys, which are the same for every sealed
    tenant, so serving it to the run that refers to its hash (whatever its tenant) gives that
    run exactly the message it recorded. Messages are deduplicated per key across sealed
    tenants: which runs refer to a locator is itself sealed in their steps, so the only signal
    left is that recording a message another sealed run already recorded adds no row. Reads try
    each configured key's locator (the active one first), then the plain hash; after a rotation
    a message is stored again under the new key's locator the next time it is recorded. A
    message missing while blobs sealed under a key that is not configured exist is a
    `StoreKeyError` naming that key, not a missing message (which would fail the run).

Rotation
    Put the new key first and keep the old ones: new payloads are sealed under the new key, old
    ones still open. `agentflow db rotate-key` re-seals every row under the active key (and
    seals what a newly sealed tenant had written in clear); after it, old keys may be dropped.

Where it happens
    In the store only, after redaction: a secret is masked, then the record is sealed, in the
    statements that write it; every read of the store opens what it returns (runs, steps,
    attempts, signals, blobs, approvals, votes, audit, usage sums, exports and forks), so code
    above the store sees plain JSON. Reading a sealed value without keys configured is a
    `StoreKeyError`, never ciphertext handed on as if it were JSON.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
import re
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from agentflow.errors import ConfigurationError, StoreKeyError

KEYS_ENV = "AGENTFLOW_ENCRYPTION_KEYS"
TENANTS_ENV = "AGENTFLOW_ENCRYPTION_TENANTS"
#: Every sealed value starts with this (then the key id, `:`, the sealed bytes).
PREFIX = "af:enc:1:"
#: A clear value that happens to start like an envelope (free text: a comment) is stored with
#: this in front, so it is never taken for one.
_RAW = "af:raw:"
_MARKS = ("af:enc:", _RAW)
#: Where a blob locator starts (a plain hash is hex only, so the two never collide).
LOCATOR = "~"
GENERATE = 'python -c "import os,base64;print(base64.b64encode(os.urandom(32)).decode())"'
_KEY_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9.\-]{0,31}")
_NONCE = 12


def _key_bytes(key_id: str, key: bytes | str) -> bytes:
    """Key material as bytes (base64 text is decoded), 16/24/32 bytes, or a ConfigurationError."""
    if isinstance(key, str):
        try:
            key = base64.b64decode(key.strip().replace("-", "+").replace("_", "/"), validate=True)
        except (binascii.Error, ValueError):
            raise ConfigurationError(
                f"encryption key {key_id!r} is not valid base64; generate a key with {GENERATE}"
            ) from None
    if len(key) not in (16, 24, 32):
        raise ConfigurationError(
            f"encryption key {key_id!r} is {len(key)} bytes; AES-GCM takes 16, 24 or 32 (32 recommended): "
            f"generate one with {GENERATE}"
        )
    return bytes(key)


class Sealing:
    """Encryption at rest for the event store (see the module docstring of `agentflow.store._seal`).

    Args:
        keys: key id -> key (16, 24 or 32 bytes, or their base64). Key ids are 1-32 letters,
            digits, `.` or `-`; they are stored beside each sealed value, the keys never are.
        active: the id of the key that seals new payloads (default: the first of `keys`); the
            others only open payloads sealed under them (rotation).
        tenants: the tenants whose payloads are sealed (default None: every tenant).

    Raises:
        ConfigurationError: no keys, a bad key id, key material that is not 16/24/32 bytes, an
            active id that is not among the keys.
    """

    def __init__(
        self, *, keys: Mapping[str, bytes | str], active: str | None = None, tenants: Iterable[str] | None = None
    ) -> None:
        if not keys:
            raise ConfigurationError(f"Sealing needs at least one key; generate one with {GENERATE}")
        for key_id in keys:
            if not isinstance(key_id, str) or not _KEY_ID.fullmatch(key_id):
                raise ConfigurationError(
                    f"encryption key id {key_id!r} is not valid: use 1-32 letters, digits, '.' or '-' (e.g. k2 or 2025-06)"
                )
        material = {key_id: _key_bytes(key_id, key) for key_id, key in keys.items()}
        self.active = active if active is not None else next(iter(material))
        if self.active not in material:
            raise ConfigurationError(
                f"the active encryption key {self.active!r} is not among the keys {sorted(material)}"
            )
        #: Key ids, the active one first (the order reads try blob locators in).
        self.key_ids: tuple[str, ...] = (self.active, *(k for k in material if k != self.active))
        self.tenants: frozenset[str] | None = None if tenants is None else frozenset(tenants)
        # Imported here: the cipher costs ~10 ms of import, paid only by stores that seal.
        from cryptography.exceptions import InvalidTag
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM

        self._invalid = InvalidTag
        self._ciphers = {key_id: AESGCM(key) for key_id, key in material.items()}
        self._active = self._ciphers[self.active]
        # Blob locators are keyed with a key derived from each encryption key (never the key itself).
        self._locator_keys = {
            key_id: hmac.new(key, b"agentflow blob locator 1", hashlib.sha256).digest()
            for key_id, key in material.items()
        }

    def __repr__(self) -> str:  # never the keys
        tenants = "all" if self.tenants is None else sorted(self.tenants)
        return f"Sealing(active={self.active!r}, keys={list(self.key_ids)}, tenants={tenants})"

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Sealing | None:
        """The sealing `AGENTFLOW_ENCRYPTION_KEYS` (`id:base64,...`, the first active) and
        `AGENTFLOW_ENCRYPTION_TENANTS` (`a,b`; default every tenant) configure; None when no keys
        are set (payloads are stored in clear).

        Raises:
            ConfigurationError: malformed variables or keys (the message says how to make a key).
        """
        env = os.environ if environ is None else environ
        spec = env.get(KEYS_ENV, "").strip()
        tenants = [t.strip() for t in env.get(TENANTS_ENV, "").split(",") if t.strip()]
        if not spec:
            if tenants:
                raise ConfigurationError(
                    f"{TENANTS_ENV} names tenants to seal but {KEYS_ENV} is not set: set it to "
                    f"'k1:<base64 key>' (generate a key with {GENERATE})"
                )
            return None
        keys: dict[str, str] = {}
        for part in spec.split(","):
            key_id, sep, key = part.strip().partition(":")
            if not sep or not key_id or not key:
                raise ConfigurationError(
                    f"{KEYS_ENV} must read 'id:<base64 key>,id:<base64 key>' (the first seals new payloads); "
                    f"an entry is {key_id + sep + ('...' if key else '')!r}. Generate a key with {GENERATE}"
                )
            if key_id in keys:
                raise ConfigurationError(f"{KEYS_ENV} names key {key_id!r} twice")
            keys[key_id] = key
        return cls(keys=keys, tenants=None if tenants in ([], ["*"]) else tenants)

    def seals(self, tenant: str | None) -> bool:
        """Whether this tenant's payloads are sealed (rows without a tenant never are)."""
        return tenant is not None and (self.tenants is None or tenant in self.tenants)

    def seal(self, text: str, aad: bytes) -> str:
        nonce = os.urandom(_NONCE)
        body = self._active.encrypt(nonce, text.encode(), aad)
        return f"{PREFIX}{self.active}:{base64.urlsafe_b64encode(nonce + body).decode()}"

    def open(self, text: str, aad: bytes, what: Callable[[], str], *, tenant: str | None) -> str:
        """Open an envelope; `what` names the value in an error (made only when there is one)."""
        key_id, _, body = text[len(PREFIX) :].partition(":")
        cipher = self._ciphers.get(key_id)
        if cipher is None:
            raise missing_key(what(), key_id, tenant, active=self.active)
        try:
            raw = base64.urlsafe_b64decode(body)
            return cipher.decrypt(raw[:_NONCE], raw[_NONCE:], aad).decode()
        except (binascii.Error, ValueError, self._invalid):
            raise StoreKeyError(
                f"{what()} does not open with encryption key {key_id!r}: the key configured under that id is not "
                f"the one it was sealed with, or the value was copied from another row or tenant. Check "
                f"{KEYS_ENV} (or the Sealing passed in); nothing was changed.",
                key_id=key_id,
                tenant=tenant,
            ) from None

    def locator(self, digest: str, key_id: str | None = None) -> str:
        """Where a sealed blob of this content hash is stored, under `key_id` (default: active)."""
        key_id = key_id or self.active
        mac = hmac.new(self._locator_keys[key_id], digest.encode(), hashlib.sha256).hexdigest()[:32]
        return f"{LOCATOR}{key_id}{LOCATOR}{mac}"


def missing_key(what: str, key_id: str, tenant: str | None, *, active: str | None) -> StoreKeyError:
    """The error for a value sealed under a key this process does not have."""
    if active is None:
        fix = (
            f"this process has no encryption keys: set {KEYS_ENV}='{key_id}:<its base64 key>' (or pass "
            "sealing=Sealing(keys=...)) to read it"
        )
    else:
        fix = (
            f"that key is not configured: add it after the active key, {KEYS_ENV}='{active}:<...>,{key_id}:<its "
            "base64 key>' (or to Sealing(keys=...)), and keep it until `agentflow db rotate-key` has re-sealed "
            "the store under the active key"
        )
    return StoreKeyError(f"{what} is sealed under encryption key {key_id!r}, but {fix}.", key_id=key_id, tenant=tenant)


def _aad(where: str, tenant: str | None, ids: tuple[Any, ...]) -> bytes:
    parts = ["agentflow:1", where, tenant or "", *("" if i is None else str(i) for i in ids)]
    return "\x1f".join(parts).encode()


def _what(where: str, tenant: str | None, ids: tuple[Any, ...]) -> str:
    table, _, column = where.partition(".")
    row = ", ".join(str(i) for i in ids if i is not None)
    return f"the {column} of {table} row ({row}) of tenant {tenant!r}"


class Sealer:
    """The store's use of a `Sealing` (or of none): seals what it writes, opens what it reads,
    field by field, with each value's place as associated data.

    `where` is "table.column"; `ids` are the row's ids bound into the associated data."""

    def __init__(self, sealing: Sealing | None) -> None:
        self.sealing = sealing

    def on(self, tenant: str | None) -> bool:
        return self.sealing is not None and self.sealing.seals(tenant)

    def seal(self, text: str | None, tenant: str | None, where: str, *ids: Any) -> str | None:
        if text is None:
            return None
        if self.sealing is None or not self.sealing.seals(tenant):
            return _RAW + text if text.startswith(_MARKS) else text
        return self.sealing.seal(text, _aad(where, tenant, ids))

    def open(self, text: str | None, tenant: str | None, where: str, *ids: Any) -> str | None:
        if text is None or not text.startswith("af:"):
            return text  # clear: what every unsealed row holds (one prefix test)
        if text.startswith(_RAW):
            return text[len(_RAW) :]
        if not text.startswith(PREFIX):
            if text.startswith("af:enc:"):  # (a clear value never does: `seal` escapes it)
                raise StoreKeyError(
                    f"{_what(where, tenant, ids)} is sealed in a format this version of agentflow does not know "
                    f"({text[:10]}...): open it with the agentflow that wrote it",
                    tenant=tenant,
                )
            return text
        if self.sealing is None:
            raise missing_key(_what(where, tenant, ids), text[len(PREFIX) :].partition(":")[0], tenant, active=None)
        return self.sealing.open(text, _aad(where, tenant, ids), lambda: _what(where, tenant, ids), tenant=tenant)

    # -- blobs -----------------------------------------------------------------------------
    def seal_blob(self, digest: str, data: str) -> tuple[str, str]:
        """(locator, sealed data) of a sealed tenant's blob: bound to its locator, not to a
        tenant (every sealed tenant's run that refers to the hash may read it)."""
        assert self.sealing is not None
        key = self.sealing.locator(digest)
        return key, self.sealing.seal(data, _aad("af_blobs.data", None, (key,)))

    def open_blob(self, key: str, data: str) -> str:
        return self.open(data, None, "af_blobs.data", key) or ""
