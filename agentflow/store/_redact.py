"""Redaction: secrets are masked before anything is recorded, so they are never stored, streamed,
exported, logged or shown in an error in clear.

What is a secret:
- a value under a field whose name says so: it ends with `password`, `token`, `api_key`,
  `community`, ... (compared without case, `_` or `-`: `snmp_community`, `X-Auth-Token`), at any depth of a JSON value, including JSON documents
  carried as text (a tool's output);
- text matching a secret's shape (agentflow operator tokens, OpenAI-style keys, AWS key ids,
  bearer tokens, private key blocks, the password in a URL);
- the values of the process's configuration secrets (environment variables named `*_KEY`,
  `*_TOKEN`, `*_SECRET`, `*PASSWORD*`; eight characters or more), wherever they appear.

Pydantic `SecretStr` values are masked by pydantic itself when encoded.

What is recorded is what every later reader gets, the workflow included: a step's result is
decoded from its redacted record, live and on replay alike. A secret therefore never travels
through a run's history: an activity that needs one fetches it where it uses it.
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cached_property
from typing import Any

MASK = "[redacted]"

DEFAULT_FIELDS = frozenset({
    "password", "passwd", "pwd", "passphrase", "secret", "clientsecret", "token", "accesstoken",
    "refreshtoken", "idtoken", "apikey", "xapikey", "authorization", "privatekey", "credential",
    "credentials", "community", "communitystring", "psk", "presharedkey", "secretkey", "accesskey",
    "authkey", "privkey", "signingkey", "encryptionkey", "cookie", "sessionid",
})  # fmt: skip

DEFAULT_PATTERNS = (
    r"\baft_[A-Za-z0-9_\-]{20,}",  # agentflow operator tokens
    r"\bsk-(?:proj-)?[A-Za-z0-9_\-]{20,}",  # OpenAI-style API keys
    r"\bAKIA[0-9A-Z]{16}\b",  # AWS access key ids
    r"(?<=[Bb]earer )[A-Za-z0-9._~+/=\-]{16,}",  # bearer tokens (the word stays)
    r"-----BEGIN [A-Z ]*PRIVATE KEY-----[\s\S]*?-----END [A-Z ]*PRIVATE KEY-----",
    r"(?<=://)[^/\s:@]+:(?!\*\*\*@)[^@\s/]+(?=@)",  # user:password in a URL (not one already shown as ***)
)
#: Text that every default pattern's match contains: a record without any (and without a secret
#: field's name) is passed over after a few substring tests, not a regex over all patterns.
DEFAULT_ANCHORS = ("aft_", "sk-", "AKIA", "earer ", "PRIVATE KEY", "://")
_SECRET_ENV = re.compile(r"(_KEY|_TOKEN|_SECRET|PASSWORD|_PASS)$|PASSWORD", re.IGNORECASE)


def _normal(name: str) -> str:
    return name.lower().replace("_", "").replace("-", "")


@dataclass(frozen=True)
class Redaction:
    """What counts as a secret (see the module docstring), and masking it.

    Args:
        fields: field names whose values are secrets (compared lower-case, without `_`/`-`).
        patterns: regular expressions of secret shapes in text.
        values: literal secrets (configuration) masked wherever they appear.
        anchors: substrings every pattern's match contains, for a quick first look (None: the
            patterns are always searched; give anchors with custom patterns to keep it cheap).
        enabled: False records everything as it is (tests of redaction itself, nothing else).
    """

    fields: frozenset[str] = DEFAULT_FIELDS
    patterns: tuple[str, ...] = DEFAULT_PATTERNS
    values: tuple[str, ...] = ()
    anchors: tuple[str, ...] | None = DEFAULT_ANCHORS
    enabled: bool = True

    @classmethod
    def from_environment(cls, environ: Mapping[str, str] | None = None, **options: Any) -> Redaction:
        """The defaults, plus the values of the environment's secret-looking variables."""
        found = _secret_environment(os.environ if environ is None else environ)
        return cls(values=tuple(options.pop("values", ())) + found, **options)

    @classmethod
    def current(cls) -> Redaction:
        """The default redaction for this process's environment as it is now (cached until a
        secret-looking variable changes): what logs, errors and stores use unless told."""
        key = _secret_environment(os.environ)
        cached = _CURRENT.get(key)
        if cached is None:
            _CURRENT.clear()
            cached = _CURRENT[key] = cls.from_environment()
        return cached

    @cached_property
    def _shapes(self) -> re.Pattern[str] | None:
        parts = [f"(?:{p})" for p in self.patterns] + [re.escape(v) for v in self.values if v]
        return re.compile("|".join(parts)) if parts else None

    @cached_property
    def _field(self) -> re.Pattern[str]:
        return re.compile("(?:" + "|".join(re.escape(f) for f in sorted(self.fields)) + ")$")

    def secret_field(self, name: str) -> bool:
        """Whether a field of this name holds a secret (its name ends with a secret field's)."""
        return bool(self.fields) and self._field.search(_normal(name)) is not None

    @cached_property
    def _keys(self) -> re.Pattern[str] | None:
        if not self.fields:
            return None
        names = "|".join(_spelled(f) for f in sorted(self.fields))
        return re.compile(rf'(?i:"[^"]{{0,64}}?(?:{names})[_\-]*\\?"\s*:)')  # `\"` too: JSON inside a string

    def _maybe(self, text: str) -> bool:
        """A cheap first look: could `text` hold a secret? (Most records cannot, and are passed
        over after a few substring tests.)"""
        if self._keys is not None and self._keys.search(text):
            return True
        if any(v and v in text for v in self.values):
            return True
        if self._shapes is None:
            return False
        if self.anchors is not None and not any(a in text for a in self.anchors):
            return False
        return self._shapes.search(text) is not None

    def text(self, value: str) -> str:
        """Free text with every secret shape and configured secret masked."""
        if not self.enabled or self._shapes is None:
            return value
        return self._shapes.sub(MASK, value)

    def data(self, value: Any) -> Any:
        """A JSON value with secret fields and shapes masked (a copy; the value is not changed)."""
        if not self.enabled:
            return value
        if isinstance(value, dict):
            return {k: (MASK if isinstance(k, str) and v is not None and self.secret_field(k) else self.data(v))
                    for k, v in value.items()}  # fmt: skip
        if isinstance(value, list | tuple):
            return [self.data(v) for v in value]
        if isinstance(value, str):
            return self._string(value)
        return value

    def json(self, text: str | None) -> str | None:
        """A recorded JSON text with its secrets masked; the same text when it holds none."""
        if text is None or not self.enabled or not self._maybe(text):
            return text
        try:
            value = json.loads(text)
        except ValueError:
            return self.text(text)
        return _dumps(self.data(value), separators=(",", ":"))

    def _string(self, value: str) -> str:
        stripped = value.lstrip()
        if stripped[:1] in ("{", "[") and self._maybe(value):
            try:  # a JSON document carried as text (a tool's output): its fields count too
                return _dumps(self.data(json.loads(value)))
            except ValueError:
                pass
        return self.text(value)


_CURRENT: dict[tuple[str, ...], Redaction] = {}


def _dumps(value: Any, **options: Any) -> str:
    """JSON text, non-ASCII kept as is, unless the value holds a lone surrogate (a model can send
    one, escaped as `\\ud83d`): written raw it could not be stored (the driver encodes UTF-8),
    so that text keeps JSON's escapes, as it came."""
    text = json.dumps(value, ensure_ascii=False, **options)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return json.dumps(value, ensure_ascii=True, **options)
    return text


def _secret_environment(env: Mapping[str, str]) -> tuple[str, ...]:
    """The values of the secret-looking variables (eight characters or more: shorter ones would
    mask ordinary words)."""
    return tuple(sorted({v for k, v in env.items() if _SECRET_ENV.search(k) and len(v) >= 8}))


def _spelled(name: str) -> str:
    """A field name matched with any `_` or `-` between its letters (`api_key`, `api-key`)."""
    return "[_\\-]?".join(re.escape(c) for c in name)


class RedactingFilter(logging.Filter):
    """A logging filter that masks secrets in the message (and traceback) of every record it sees.

    Args:
        redaction: what to mask (default: `Redaction.current()` at each record).
    """

    def __init__(self, redaction: Redaction | None = None) -> None:
        super().__init__()
        self.redaction = redaction

    def filter(self, record: logging.LogRecord) -> bool:
        redaction = self.redaction or Redaction.current()
        message = record.getMessage()
        masked = redaction.text(message)
        if masked != message:
            record.msg, record.args = masked, None
        if record.exc_info and record.exc_info[1] is not None:
            record.exc_text = redaction.text(logging.Formatter().formatException(record.exc_info))
            record.exc_info = None
        return True
