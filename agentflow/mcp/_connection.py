"""One MCP client session per server and process, on an event loop thread of its own.

The SDK's client is anyio code whose session must be entered and left by one task on one loop,
while an agent's tools are awaited on whatever loop runs the workflow (and the tool list is read
once, synchronously, when the agent is built). So each server gets one daemon thread running
one loop; every request is handed to it (`asyncio.run_coroutine_threadsafe`) and awaited where
it was made. The session is opened on first use, kept for every later request, and dropped when
the transport breaks (the server exited or restarted): the next request opens a new one. After
a fork (a worker process started from a parent that listed the tools) the parent's thread is not
there: the child starts its own on first use. `close()` ends the session, its server process
(stdio) and the thread; open connections are closed at interpreter exit.
"""

from __future__ import annotations

import asyncio
import atexit
import concurrent.futures
import logging
import os
import threading
import weakref
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, TypeVar

from agentflow.errors import ToolError

if TYPE_CHECKING:
    from mcp import Client

T = TypeVar("T")
log = logging.getLogger("agentflow.mcp")
_OPEN: weakref.WeakSet[Connection] = weakref.WeakSet()


class Connection:
    """The session to one MCP server: `target` is a URL (streamable HTTP) or a command list
    (stdio), `env`/`cwd` those of a stdio server's process."""

    def __init__(
        self, name: str, target: str | list[str], *, timeout: float, env: dict[str, str] | None = None,
        cwd: str | None = None,
    ) -> None:  # fmt: skip
        self.name = name
        self.target = target
        self.timeout = timeout
        self.env = env
        self.cwd = cwd
        self._guard = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._pid = 0
        # Touched on the connection's loop only:
        self._client: Client | None = None
        self._holder: asyncio.Task[None] | None = None
        self._closing: asyncio.Event | None = None
        self._opening: asyncio.Lock | None = None
        #: Sessions opened so far in this process (a reconnect opens one more).
        self.opened = 0

    # -- from any thread ---------------------------------------------------------------------
    def run_sync(self, work: Callable[[Client], Awaitable[T]], timeout: float | None = None) -> T:
        """Run `work(client)` on the session; block until it is done (at most `timeout` s: then
        the work is cancelled, not left running on the session's loop)."""
        future = self._submit(work)
        try:
            return future.result(timeout)
        except concurrent.futures.TimeoutError:
            future.cancel()
            raise ToolError(f"MCP server {self.name} did not answer within {timeout:g} s",
                            system=f"mcp {self.name}", retryable=True) from None  # fmt: skip

    async def run(self, work: Callable[[Client], Awaitable[T]]) -> T:
        """Run `work(client)` on the session; await it from any event loop."""
        return await asyncio.wrap_future(self._submit(work))

    def close(self) -> None:
        """End the session (and a stdio server's process) and the loop thread."""
        with self._guard:
            loop, thread = self._loop, self._thread
            self._loop = self._thread = None
        if loop is None or thread is None or self._pid != os.getpid() or not thread.is_alive():
            return
        try:
            asyncio.run_coroutine_threadsafe(self._drop(), loop).result(10)
        except (concurrent.futures.TimeoutError, RuntimeError):  # pragma: no cover - a stuck server
            log.warning("mcp %s: the session did not close in 10 s", self.name)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)

    def _submit(self, work: Callable[[Client], Awaitable[T]]) -> concurrent.futures.Future[T]:
        return asyncio.run_coroutine_threadsafe(self._request(work), self._ensure_loop())

    def _ensure_loop(self) -> asyncio.AbstractEventLoop:
        with self._guard:
            alive = self._thread is not None and self._thread.is_alive() and self._pid == os.getpid()
            if self._loop is None or not alive:
                # First use in this process (or after a fork, where the parent's thread is gone).
                self._client = self._holder = self._closing = self._opening = None
                loop = asyncio.new_event_loop()
                ready = threading.Event()
                thread = threading.Thread(target=_serve, args=(loop, ready), name=f"agentflow-mcp-{self.name}",
                                          daemon=True)  # fmt: skip
                thread.start()
                ready.wait()
                self._loop, self._thread, self._pid = loop, thread, os.getpid()
                _OPEN.add(self)
            return self._loop

    # -- on the connection's loop ------------------------------------------------------------
    async def _request(self, work: Callable[[Client], Awaitable[T]]) -> T:
        client = await self._session()
        try:
            return await work(client)
        except Exception as exc:
            if _broken(exc):
                await self._drop()  # the next request opens a new session
                raise ToolError(f"MCP server {self.name} went away: {_what(exc)}", system=f"mcp {self.name}",
                                retryable=True) from exc  # fmt: skip
            raise _answered(self.name, exc) from exc

    async def _session(self) -> Client:
        if self._opening is None:
            self._opening = asyncio.Lock()
        async with self._opening:
            if self._client is not None and self._holder is not None and not self._holder.done():
                return self._client
            ready: asyncio.Future[Client] = asyncio.get_running_loop().create_future()
            self._closing = asyncio.Event()
            self._holder = asyncio.create_task(self._hold(ready, self._closing))
            try:
                return await asyncio.wait_for(asyncio.shield(ready), self.timeout)
            except TimeoutError:
                # A server stuck in its handshake holds the task in the SDK's `__aenter__`, where
                # `closing` is never awaited: cancel it (the SDK stops the server process then).
                self._closing.set()
                self._holder.cancel()
                ready.add_done_callback(_retrieved)
                raise ToolError(f"MCP server {self.name} did not answer within {self.timeout:g} s",
                                system=f"mcp {self.name}", retryable=True) from None  # fmt: skip

    async def _hold(self, ready: asyncio.Future[Client], closing: asyncio.Event) -> None:
        """Own the session for its whole life: the SDK's task groups are entered and left here."""
        from mcp import Client

        try:
            async with Client(self._transport(), cache=None, read_timeout_seconds=self.timeout) as client:
                self._client = client
                self.opened += 1
                ready.set_result(client)
                await closing.wait()
        except Exception as exc:  # noqa: BLE001 - a server that cannot be reached or went away
            if not ready.done():
                ready.set_exception(ToolError(f"cannot connect to MCP server {self.name}: {_what(exc)}",
                                              system=f"mcp {self.name}", retryable=True))  # fmt: skip
            else:
                log.info("mcp %s: the session ended: %s", self.name, _what(exc))
        finally:
            self._client = None

    async def _drop(self) -> None:
        holder, closing = self._holder, self._closing
        self._client = None
        if closing is not None:
            closing.set()
        if holder is not None and not holder.done():
            try:
                await asyncio.wait_for(holder, 10)
            except (TimeoutError, asyncio.CancelledError):  # pragma: no cover - a stuck transport
                holder.cancel()

    def _transport(self) -> Any:
        if isinstance(self.target, str):
            from mcp.client.streamable_http import streamable_http_client

            return streamable_http_client(self.target)
        from mcp import StdioServerParameters
        from mcp.client.stdio import stdio_client

        command, *args = self.target
        return stdio_client(StdioServerParameters(command=command, args=args, env=self.env, cwd=self.cwd))


def _retrieved(done: asyncio.Future[Any]) -> None:
    """Mark an abandoned future's exception as seen (nobody awaits it any more)."""
    if not done.cancelled():
        done.exception()


def _serve(loop: asyncio.AbstractEventLoop, ready: threading.Event) -> None:
    asyncio.set_event_loop(loop)
    loop.call_soon(ready.set)
    try:
        loop.run_forever()
    finally:
        loop.close()


def _broken(exc: BaseException) -> bool:
    """Whether the transport is gone (not: the server answered with an error, or was slow)."""
    from mcp import MCPError
    from mcp_types import CONNECTION_CLOSED

    if isinstance(exc, MCPError):
        return exc.code == CONNECTION_CLOSED
    # (RuntimeError: the SDK refusing an answer it did get, e.g. invalid structured content.)
    return not isinstance(exc, TimeoutError | ToolError | RuntimeError)


def _answered(name: str, exc: Exception) -> Exception:
    """An error of a session that is still there, typed: the server's error answer (retried only
    when it is a timeout), or the SDK's refusal of what it answered (a result that does not fit
    the tool's output schema: the tool ran, so running it again is no cure)."""
    from mcp import MCPError
    from mcp_types import REQUEST_TIMEOUT

    if isinstance(exc, MCPError):
        return ToolError(f"MCP server {name} answered: {_what(exc)}", system=f"mcp {name}",
                         retryable=exc.code == REQUEST_TIMEOUT)  # fmt: skip
    if isinstance(exc, RuntimeError):
        return ToolError(f"MCP server {name}: {_what(exc)}", system=f"mcp {name}", retryable=False)
    return exc


def _what(exc: BaseException) -> str:
    if isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        return _what(exc.exceptions[0])
    return f"{type(exc).__name__}: {exc}"[:300]


@atexit.register
def _close_all() -> None:
    for conn in list(_OPEN):
        try:
            conn.close()
        except Exception:  # noqa: BLE001 - the process is ending; nothing to report to
            pass
