"""A NETCONF device serving the `agentflow-ran` YANG module: the cells' configuration, changed
through the candidate datastore and confirmed commits (RFC 6241 §8.3–8.4), over ncclient.

    from agentflow_noc.netconf import Device, DeviceSettings
    device = Device(DeviceSettings.from_env())   # NOC_NETCONF_HOST, _PORT, _USER, _KEY, ...
    device.stage("CS-101", "hoA3Offset", 3)      # edit the candidate, validate, diff, discard
    done = device.apply("CS-101", "hoA3Offset", 3, key="run-1:7", timeout=3600)
    device.confirm("CS-101", done["change_id"])  # or device.rollback(...): cancel-commit

Values are not range-checked here: the device validates them against its YANG module and a
refused value comes back as a `ToolError` (not retryable) carrying the device's own words, which
is what an agent reads. Every change also writes `/ran/last-change` (its idempotency key, change
id, persist id and state) in the same edit, hence the same commit: whether a change happened is
read from the device, not remembered by the worker. A confirmed commit the device reverts at its
timeout takes that record with it.

Limits: a device has one candidate and at most one pending confirmed commit, so a second change
is refused (retryable) while one is pending; sessions are opened per operation (a worker holds
no connection while a run waits).
"""

from __future__ import annotations

import getpass
import hashlib
import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path
from typing import Any

from ncclient import manager
from ncclient.manager import Manager
from ncclient.operations import MissingCapabilityError, OperationError, RPCError, TimeoutExpiredError
from ncclient.transport.errors import AuthenticationError, SessionError, SSHUnknownHostError, TransportError

from agentflow.engine import crash_point
from agentflow.errors import ToolError
from agentflow_noc import model
from agentflow_noc.netconf_xml import NS, cells_xml, check_param, from_text, parse_ran, to_text

MODULE = "agentflow-ran"
ENV_HOST, ENV_PORT, ENV_USER = "NOC_NETCONF_HOST", "NOC_NETCONF_PORT", "NOC_NETCONF_USER"
ENV_KEY, ENV_HOSTKEY = "NOC_NETCONF_KEY", "NOC_NETCONF_HOSTKEY"
ENV_CONFIRM_TIMEOUT = "NOC_NETCONF_CONFIRM_TIMEOUT"
#: The crash point between a change's commit on the device and its result reaching the engine.
COMMITTED = "noc.netconf.committed"
# Error tags that say the request itself is wrong (a value out of range, an unknown leaf):
# sending it again cannot help. Anything else (lock-denied, in-use, resource-denied) may pass later.
_REFUSALS = {"invalid-value", "bad-element", "unknown-element", "bad-attribute", "missing-element",
             "unknown-namespace", "data-exists", "data-missing", "malformed-message"}  # fmt: skip


def yang_path() -> Path:
    """The `agentflow-ran` YANG module shipped with the pack (load it into the device)."""
    return Path(str(files("agentflow_noc") / "yang" / f"{MODULE}.yang"))


@dataclass(frozen=True, slots=True, kw_only=True)
class DeviceSettings:
    """How to reach a NETCONF device over SSH.

    Attributes:
        host, port, user: the SSH endpoint and account (port 830 is NETCONF's own).
        key_file: the private key to log in with (None: the SSH agent and ~/.ssh keys).
        hostkey: the device's public host key (base64, as in `ssh-keyscan`) to pin; None checks
            ~/.ssh/known_hosts. Host keys are always verified.
        timeout: seconds to wait for the device on each request.
        confirm_timeout: seconds a confirmed commit waits for its confirmation before the device
            reverts it: longer than the monitoring window.
    """

    host: str
    user: str
    port: int = 830
    key_file: str | None = None
    hostkey: str | None = None
    timeout: float = 30.0
    confirm_timeout: int = 3600

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> DeviceSettings:
        """Settings from `NOC_NETCONF_HOST` (required), `_PORT`, `_USER` (default: this account),
        `_KEY`, `_HOSTKEY` and `_CONFIRM_TIMEOUT`."""
        env = os.environ if environ is None else environ
        host = env.get(ENV_HOST)
        if not host:
            raise ToolError(f"no NETCONF device configured: set {ENV_HOST} (and {ENV_PORT}, {ENV_USER}, {ENV_KEY})",
                            system="netconf")  # fmt: skip
        return cls(
            host=host, port=int(env.get(ENV_PORT, "830")), user=env.get(ENV_USER) or account(),
            key_file=env.get(ENV_KEY) or None, hostkey=env.get(ENV_HOSTKEY) or None,
            confirm_timeout=int(env.get(ENV_CONFIRM_TIMEOUT, "3600")),
        )  # fmt: skip

    def environ(self) -> dict[str, str]:
        """These settings as the environment variables `from_env` reads (for worker processes)."""
        pairs = {ENV_HOST: self.host, ENV_PORT: str(self.port), ENV_USER: self.user, ENV_KEY: self.key_file,
                 ENV_HOSTKEY: self.hostkey, ENV_CONFIRM_TIMEOUT: str(self.confirm_timeout)}  # fmt: skip
        return {k: v for k, v in pairs.items() if v}

    @property
    def name(self) -> str:
        return f"netconf {self.host}:{self.port}"


def account() -> str:
    """This process's account name (the default NETCONF user)."""
    return getpass.getuser()


def persist_id(key: str) -> str:
    """The persist id of the confirmed commit made for idempotency key `key`: stable across
    retries, so a retried apply, confirm or cancel names the same commit."""
    return "agentflow-" + hashlib.sha256(key.encode()).hexdigest()[:20]


# -- the device -----------------------------------------------------------------------------------
class Device:
    """One NETCONF device (or netconfd) serving `agentflow-ran`: read, stage and change cells.

    Each method opens its own session (a worker holds no connection while its run waits) and,
    for changes, locks the candidate datastore and starts from a clean candidate (discard-changes),
    so another client's leftovers never ride along with a commit.
    """

    def __init__(self, settings: DeviceSettings) -> None:
        self.settings = settings

    def __repr__(self) -> str:
        return f"<Device {self.settings.name}>"

    @contextmanager
    def session(self) -> Iterator[Manager]:
        """A NETCONF session; failures to reach the device are retryable `ToolError`s."""
        s = self.settings
        try:
            conn = manager.connect(
                host=s.host, port=s.port, username=s.user, key_filename=s.key_file, timeout=s.timeout,
                hostkey_verify=True, hostkey_b64=s.hostkey, allow_agent=s.key_file is None,
                look_for_keys=s.key_file is None,
                manager_params={"timeout": s.timeout},  # each RPC's wait (ncclient's own default: 30 s)
            )  # fmt: skip
        except (SSHUnknownHostError, AuthenticationError) as exc:
            # Not retried: a host key that is not the pinned one, or a login refused, needs a person.
            raise ToolError(f"{s.name} refused: {exc} (check {ENV_HOSTKEY}, {ENV_USER}, {ENV_KEY})",
                            system=s.name) from exc  # fmt: skip
        except (TransportError, SessionError, OSError) as exc:  # SessionError: no hello in time
            raise ToolError(f"{s.name} is unreachable: {exc}", system=s.name, retryable=True) from exc
        try:
            yield conn
        except RPCError as exc:
            raise self.refusal(exc) from exc
        except MissingCapabilityError as exc:
            raise ToolError(f"{s.name} lacks a capability the pack needs (:candidate, :confirmed-commit 1.1): {exc}",
                            system=s.name) from exc  # fmt: skip
        except (TransportError, TimeoutExpiredError, OperationError) as exc:
            raise ToolError(f"{s.name}: the session broke or timed out: {exc!r}", system=s.name,
                            retryable=True) from exc  # fmt: skip
        finally:
            if conn.connected:
                with suppress(TransportError, TimeoutExpiredError, OperationError, OSError):
                    conn.close_session()  # a broken session must not hide the error above

    def refusal(self, exc: RPCError) -> ToolError:
        """A device's RPC error as the `ToolError` an agent reads (what, where, the bad value)."""
        tag, path = exc.tag or "error", exc.path or ""
        where = path.rsplit("/", 1)[-1].split(":")[-1] if path else ""
        message = f"the device refused the request: {exc.message or tag}" + (f" ({where})" if where else "")
        return ToolError(message, system=self.settings.name, detail=f"{tag} {path}".strip(),
                         retryable=tag not in _REFUSALS)  # fmt: skip

    @contextmanager
    def editing(self, *, lock: bool = True) -> Iterator[Manager]:
        """A session with a clean candidate (discarded again on failure), holding the candidate's
        lock when `lock`. netconfd refuses the lock while a confirmed commit is pending, so the
        confirming commit and cancel-commit edit without it; a locked apply is then refused,
        which is right: one pending change at a time."""
        with self.session() as conn:
            if lock:
                conn.lock("candidate")
            try:
                conn.discard_changes()
                yield conn
            except BaseException:
                if conn.connected:
                    conn.discard_changes()
                raise
            finally:
                if lock and conn.connected:
                    conn.unlock("candidate")

    # -- reads -------------------------------------------------------------------------------------
    def read(self, conn: Manager, source: str = "running") -> tuple[dict[str, dict[str, Any]], dict[str, Any] | None]:
        reply = conn.get_config(source, filter=("subtree", f'<ran xmlns="{NS}"/>'))
        return parse_ran(str(reply.data_xml))

    def configs(self) -> dict[str, dict[str, Any]]:
        """Every cell's running configuration, {site: {param: value}}."""
        with self.session() as conn:
            return self.read(conn)[0]

    def config(self, site: str) -> dict[str, Any]:
        """One cell's running configuration (a `ToolError` for a site the device does not have)."""
        with self.session() as conn:
            cells, _ = self.read(conn)
        return self._cell(cells, site)

    def last_change(self) -> dict[str, Any] | None:
        """The running `/ran/last-change` record (None before any change made through the pack)."""
        with self.session() as conn:
            return self.read(conn)[1]

    def _cell(self, cells: Mapping[str, dict[str, Any]], site: str) -> dict[str, Any]:
        if site not in cells:
            known = ", ".join(sorted(cells)) or "none"
            raise ToolError(f"the device has no cell {site!r} (cells: {known})", system=self.settings.name)
        return cells[site]

    # -- changes -----------------------------------------------------------------------------------
    def _edit(self, site: str, param: str, value: Any) -> None:
        """Refuse, before any session, an edit that cannot be XML leaf text of the module (an
        unknown parameter, a character XML cannot carry): not retryable, the call must change."""
        try:
            check_param(param)
            cells_xml({site: {param: value}})
        except ValueError as exc:
            raise ToolError(f"not sent to the device: {exc}", system=self.settings.name) from None

    def load(self, cells: Mapping[str, Mapping[str, Any]]) -> None:
        """Merge `cells` into the running configuration with a plain commit (initial config)."""
        with self.editing() as conn:
            conn.edit_config(target="candidate", config=cells_xml(cells))
            conn.commit()

    def stage(self, site: str, param: str, value: Any) -> dict[str, Any]:
        """Edit the candidate, have the device validate it, and return the diff from running;
        the candidate is discarded either way (a stage changes nothing: apply edits again).
        No lock: a stage must work while a change is pending, and another client's locked
        candidate refuses this edit (retryable) rather than mixing it in."""
        self._edit(site, param, value)
        with self.editing(lock=False) as conn:
            running, _ = self.read(conn)
            before = self._cell(running, site)
            conn.edit_config(target="candidate", config=cells_xml({site: {param: value}}))
            conn.validate(source="candidate")
            after = self._cell(self.read(conn, "candidate")[0], site)
            conn.discard_changes()
        to = after.get(param)
        diff = {p: {"from": before.get(p), "to": v} for p, v in after.items() if before.get(p) != v}
        return {"site": site, "param": param, "from": before.get(param), "to": to, "diff": diff,
                "change_id": model.change_id(site, param, to), "validated": True, "dry_run": True}  # fmt: skip

    def apply(self, site: str, param: str, value: Any, *, key: str, timeout: int | None = None) -> dict[str, Any]:
        """Commit `param = value` on `site` with a confirmed commit (persisted, so any session
        can confirm or cancel it) that the device reverts after `timeout` seconds unless
        confirmed. Once per idempotency `key`: a key the device already records returns that
        change (`deduplicated`)."""
        self._edit(site, param, value)
        timeout = self.settings.confirm_timeout if timeout is None else timeout
        with self.session() as conn:  # first unlocked: the lock is refused while a change is pending
            prior = self._prior(self.read(conn)[1], key)
        if prior is not None:
            return prior
        with self.editing() as conn:
            running, last = self.read(conn)
            prior = self._prior(last, key)
            if prior is not None:
                return prior
            previous = self._cell(running, site).get(param)
            to = from_text(param, to_text(value))
            record = {"key": key, "change-id": model.change_id(site, param, to), "persist-id": persist_id(key),
                      "site": site, "param": param, "value": to_text(value), "previous": to_text(previous),
                      "state": "pending", "description": f"confirmed commit, {timeout} s to confirm"}  # fmt: skip
            # No <validate> first: the commit validates, and netconfd 2.13 drops a container
            # created in the candidate (last-change) from the commit that follows a <validate>.
            conn.edit_config(target="candidate", config=cells_xml({site: {param: value}}, record))
            conn.commit(confirmed=True, timeout=str(int(timeout)), persist=record["persist-id"])
            crash_point(COMMITTED)  # tests: the device committed, the engine has not recorded it
        return {**self.change_result(record), "confirm_timeout": int(timeout), "deduplicated": False}

    def _prior(self, last: Mapping[str, Any] | None, key: str) -> dict[str, Any] | None:
        """The change `key` already made (the device records it), or None; a `ToolError`
        (retryable) while another change awaits its confirmation."""
        if last is None:
            return None
        if last.get("key") == key:
            return {**self.change_result(last), "deduplicated": True}
        if last.get("state") == "pending":
            raise ToolError(f"change {last.get('change-id')} on {last.get('site')} is pending confirmation on the "
                            "device: confirm or roll it back first", system=self.settings.name, retryable=True)  # fmt: skip
        return None

    def change_result(self, record: Mapping[str, Any]) -> dict[str, Any]:
        """What apply_change reports, from a `/ran/last-change` record."""
        param = str(record.get("param"))
        return {"applied": True, "site": record.get("site"), "param": param,
                "value": from_text(param, record.get("value")), "previous": from_text(param, record.get("previous")),
                "change_id": record.get("change-id"), "persist_id": record.get("persist-id"),
                "state": record.get("state")}  # fmt: skip

    def result_for_key(self, key: str) -> dict[str, Any] | None:
        """The change idempotency `key` made, if the running configuration records it (reconcile)."""
        last = self.last_change()
        return None if last is None or last.get("key") != key else self._prior(last, key)

    def status(self, site: str, change_id: str) -> dict[str, Any]:
        """Where `change_id` stands on the device: `pending` (committed, awaiting confirmation),
        `confirmed`, `restored` (undone by a later change) or `gone` (not the device's latest
        change: reverted at its confirm timeout, cancelled, or replaced), with the cell's config."""
        with self.session() as conn:
            cells, last = self.read(conn)
        config = self._cell(cells, site)
        if last is not None and last.get("change-id") == f"undo-{change_id}":
            state = "restored"
        elif last is not None and self._mine(last, site, change_id):
            state = str(last.get("state"))
        else:
            state = "gone"
        return {"site": site, "change_id": change_id, "state": state, "config": config}

    def confirm(self, site: str, change_id: str) -> dict[str, Any]:
        """Confirm the pending change `change_id` (the confirming commit, with its persist id);
        a change the device already reverted is reported, never re-made."""
        with self.editing(lock=False) as conn:
            _, last = self.read(conn)
            mine = last is not None and self._mine(last, site, change_id)
            if last is not None and mine and last.get("state") == "confirmed":
                return {"confirmed": True, "site": site, "change_id": change_id, "deduplicated": True}
            if last is None or not mine or last.get("state") != "pending":
                return self._gone(site, change_id, "confirmed")
            conn.edit_config(target="candidate", config=cells_xml({}, {"state": "confirmed"}))
            try:
                conn.commit(persist_id=last["persist-id"])
            except RPCError as exc:
                conn.discard_changes()
                self._unless_pending(conn, site, change_id, exc)
                return self._gone(site, change_id, "confirmed")  # the device's timer won the race
        return {"confirmed": True, "site": site, "change_id": change_id, "param": last.get("param"),
                "value": from_text(str(last.get("param")), last.get("value")), "deduplicated": False}  # fmt: skip

    def rollback(self, site: str, change_id: str, *, key: str) -> dict[str, Any]:
        """Undo `change_id`: cancel-commit while it is pending; once confirmed, a new change
        (plain commit, under the lock) restoring the value it replaced. Once per idempotency `key`."""
        with self.editing(lock=False) as conn:
            _, last = self.read(conn)
            if last is not None and last.get("state") == "pending" and self._mine(last, site, change_id):
                try:
                    conn.cancel_commit(persist_id=last["persist-id"])
                except RPCError as exc:  # the device's timer won the race: reverted all the same
                    self._unless_pending(conn, site, change_id, exc)
                    return {**self._gone(site, change_id, "rolled_back"), "rolled_back": True, "how": "device"}
                param = str(last.get("param"))
                return {"rolled_back": True, "site": site, "change_id": change_id, "how": "cancel-commit",
                        "param": param, "value": from_text(param, last.get("previous")), "deduplicated": False}  # fmt: skip
        with self.editing() as conn:
            _, last = self.read(conn)
            if last is not None and last.get("key") == key:
                done = {"rolled_back": True, "site": site, "change_id": change_id, "how": "restore"}
                return {**done, "value": from_text(str(last.get("param")), last.get("value")), "deduplicated": True}
            if last is None or last.get("state") != "confirmed" or not self._mine(last, site, change_id):
                return {**self._gone(site, change_id, "rolled_back"), "rolled_back": False}
            param, previous = str(last.get("param")), last.get("previous")
            record = {"key": key, "change-id": f"undo-{change_id}", "site": site, "param": param,
                      "value": previous, "previous": last.get("value"), "state": "restored",
                      "description": f"restores the value {change_id} replaced"}  # fmt: skip
            conn.edit_config(target="candidate", config=cells_xml({site: {param: previous}}, record))
            conn.commit()
        return {"rolled_back": True, "site": site, "change_id": change_id, "how": "restore", "param": param,
                "value": from_text(param, previous), "deduplicated": False}  # fmt: skip

    def _unless_pending(self, conn: Manager, site: str, change_id: str, exc: RPCError) -> None:
        """After a refused confirm or cancel: a change still pending on the device was refused
        for another reason (a lock, a busy device), which must not be reported as reverted:
        a retryable `ToolError`. A change gone lost the race with the device's timer."""
        _, last = self.read(conn)
        if last is not None and last.get("state") == "pending" and self._mine(last, site, change_id):
            said = exc.message or exc.tag or "error"
            raise ToolError(f"the device refused: {said}; {change_id} is still pending on the device",
                            system=self.settings.name, detail=f"{exc.tag} {exc.path or ''}".strip(),
                            retryable=True) from exc  # fmt: skip

    @staticmethod
    def _mine(last: Mapping[str, Any], site: str, change_id: str) -> bool:
        return last.get("change-id") == change_id and last.get("site") == site

    def _gone(self, site: str, change_id: str, verb: str) -> dict[str, Any]:
        """A change that is not the device's pending one: reverted at its timeout, or replaced."""
        return {verb: False, "site": site, "change_id": change_id, "reverted": True,
                "reason": f"{change_id} is not pending on the device: it was reverted at its confirm timeout, "
                          "cancelled, or replaced by a later change; nothing was committed"}  # fmt: skip


def cell_configs(settings: DeviceSettings | None = None) -> dict[str, dict[str, Any]]:
    """Every cell's running configuration, {site: {param: value}}, from the device `settings`
    name (default: the `NOC_NETCONF_*` environment). A config source for `ransim`'s exporter:
    `RanCollector(configs=cell_configs, ...)` or `functools.partial(cell_configs, settings)`."""
    return Device(settings or DeviceSettings.from_env()).configs()
