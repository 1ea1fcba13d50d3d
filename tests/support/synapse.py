"""A real Matrix homeserver for the Matrix bridge's tests: Synapse (`matrix-synapse` from PyPI)
on 127.0.0.1, a free port, SQLite, no federation and no outside key server, its rate limits
raised (the tests send messages in bursts), accounts registered with the shared secret.

`Synapse(dir).start()` writes the configuration (the generated one, with the listener, paths,
limits and logging replaced), starts `python -m synapse.app.homeserver` and waits until
`/_matrix/client/versions` answers (about 3 s here); `stop()` ends it.
"""

from __future__ import annotations

import hashlib
import hmac
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import yaml

from agentflow.testing import assert_eventually
from support.served import free_port, terminate

SERVER_NAME = "localhost"
_FAST = {"per_second": 10_000, "burst_count": 10_000}


class Synapse:
    """A homeserver in `root` (its config, database, media and log); nothing runs until `start()`."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.config = root / "homeserver.yaml"
        self.log = root / "homeserver.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self._secret = ""

    def start(self, timeout: float = 90) -> None:
        """Start the homeserver (again, on the same port and database, after `stop()`)."""
        if not self.config.exists():
            self.root.mkdir(parents=True, exist_ok=True)
            subprocess.run([sys.executable, "-m", "synapse.app.homeserver", "--server-name", SERVER_NAME,
                            "--config-path", str(self.config), "--generate-config", "--report-stats=no"],
                           cwd=self.root, check=True, capture_output=True, timeout=120)  # fmt: skip
            config = yaml.safe_load(self.config.read_text())
            config.update(self._overrides())
            self.config.write_text(yaml.safe_dump(config))
        self._secret = yaml.safe_load(self.config.read_text())["registration_shared_secret"]
        with (self.root / "stdout.log").open("ab") as out:
            self.proc = subprocess.Popen([sys.executable, "-m", "synapse.app.homeserver", "--config-path",
                                          str(self.config)], cwd=self.root, stdout=out, stderr=subprocess.STDOUT)  # fmt: skip

        def answers() -> bool:
            assert self.proc is not None and self.proc.poll() is None, f"synapse exited: {self.tail()}"
            try:
                return httpx.get(f"{self.url}/_matrix/client/versions", timeout=2).status_code == 200
            except httpx.TransportError:
                return False

        try:
            assert_eventually(answers, timeout=timeout, interval=0.1, message="synapse did not answer")
        except BaseException:
            self.stop()  # a homeserver that never answered is not left running (no fixture owns it yet)
            raise

    def _overrides(self) -> dict[str, Any]:
        log_config = self.root / "log.yaml"
        log_config.write_text(yaml.safe_dump({
            "version": 1, "disable_existing_loggers": False,
            "formatters": {"plain": {"format": "%(asctime)s %(name)s %(levelname)s %(message)s"}},
            "handlers": {"file": {"class": "logging.FileHandler", "filename": str(self.log), "formatter": "plain"}},
            "root": {"level": "WARNING", "handlers": ["file"]},
        }))  # fmt: skip
        return {
            "listeners": [{"port": self.port, "bind_addresses": ["127.0.0.1"], "type": "http", "tls": False,
                           "x_forwarded": False, "resources": [{"names": ["client"], "compress": False}]}],
            "database": {"name": "sqlite3", "args": {"database": str(self.root / "homeserver.db")}},
            "media_store_path": str(self.root / "media"), "pid_file": str(self.root / "homeserver.pid"),
            "log_config": str(log_config), "trusted_key_servers": [], "suppress_key_server_warning": True,
            "presence": {"enabled": False}, "enable_registration": False, "report_stats": False,
            "rc_message": _FAST, "rc_login": {"address": _FAST, "account": _FAST, "failed_attempts": _FAST},
            "rc_registration": _FAST, "rc_joins": {"local": _FAST, "remote": _FAST}, "rc_room_creation": _FAST,
            "rc_invites": {"per_room": _FAST, "per_user": _FAST, "per_issuer": _FAST},
        }  # fmt: skip

    def register(self, name: str, password: str) -> str:
        """Register `@name:localhost` with the shared secret (the admin API); return the user id."""
        nonce = httpx.get(f"{self.url}/_synapse/admin/v1/register", timeout=10).json()["nonce"]
        mac = hmac.new(self._secret.encode(), b"\x00".join([nonce.encode(), name.encode(), password.encode(),
                                                             b"notadmin"]), hashlib.sha1).hexdigest()  # fmt: skip
        body = {"nonce": nonce, "username": name, "password": password, "admin": False, "mac": mac}
        answer = httpx.post(f"{self.url}/_synapse/admin/v1/register", json=body, timeout=30)
        assert answer.status_code == 200, answer.text
        return str(answer.json()["user_id"])

    def stop(self) -> None:
        if self.proc is not None:
            terminate(self.proc)
            self.proc = None

    def tail(self, chars: int = 3000) -> str:
        return "".join(p.read_text(errors="replace")[-chars:] for p in (self.root / "stdout.log", self.log)
                       if p.exists())  # fmt: skip


class Person:
    """A person (or the bot, seen from outside) in the homeserver, through matrix-nio: what a
    chat client would show them and what they type."""

    def __init__(self, synapse: Synapse, name: str, password: str) -> None:
        from nio import AsyncClient

        self.user = f"@{name}:{SERVER_NAME}"
        self.password = password
        self.client = AsyncClient(synapse.url, self.user)

    async def login(self) -> None:
        from nio import LoginResponse

        assert isinstance(await self.client.login(self.password), LoginResponse)

    async def create_room(self, invite: list[str]) -> str:
        from nio import RoomCreateResponse

        made = await self.client.room_create(invite=invite, name="noc-east approvals")
        assert isinstance(made, RoomCreateResponse), made
        return str(made.room_id)

    async def join(self, room: str) -> None:
        from nio import JoinResponse

        assert isinstance(await self.client.join(room), JoinResponse)

    async def say(self, room: str, body: str, *, thread: str | None = None, **content: Any) -> str:
        """Send `body` (in the thread of `thread`, as Element does) and return its event id."""
        from nio import RoomSendResponse

        message: dict[str, Any] = {"msgtype": "m.text", "body": body, **content}
        if thread is not None:
            message["m.relates_to"] = {"rel_type": "m.thread", "event_id": thread, "is_falling_back": True,
                                       "m.in_reply_to": {"event_id": thread}}  # fmt: skip
        sent = await self.client.room_send(room, "m.room.message", message)
        assert isinstance(sent, RoomSendResponse), sent
        return str(sent.event_id)

    async def edit(self, room: str, event_id: str, body: str) -> str:
        new = {"msgtype": "m.text", "body": body}
        return await self.say(room, f"* {body}", **{"m.new_content": new,
                              "m.relates_to": {"rel_type": "m.replace", "event_id": event_id}})  # fmt: skip

    async def react(self, room: str, event_id: str, key: str) -> None:
        from nio import RoomSendResponse

        content = {"m.relates_to": {"rel_type": "m.annotation", "event_id": event_id, "key": key}}
        assert isinstance(await self.client.room_send(room, "m.reaction", content), RoomSendResponse)

    async def history(self, room: str) -> list[dict[str, Any]]:
        """Every message event of the room, oldest first (the raw events, as a client gets them)."""
        from nio import RoomMessagesResponse

        found: list[dict[str, Any]] = []
        start = None
        while True:
            page = await self.client.room_messages(room, start=start, limit=200,
                                                   message_filter={"types": ["m.room.message"]})  # fmt: skip
            assert isinstance(page, RoomMessagesResponse), page
            found.extend(e.source for e in page.chunk)
            if not page.chunk or not page.end or page.end == start:
                return found[::-1]
            start = page.end

    async def close(self) -> None:
        await self.client.close()
