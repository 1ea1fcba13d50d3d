"""`Trace`: one recorded run, read back as tables, a timeline, a replay, a what-if and a fork."""

from __future__ import annotations

from collections.abc import Sequence
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import pandas as pd

from agentflow.engine import Activity, App, Client, RunHandle, Workflow
from agentflow.policy import PolicyPack
from agentflow.store import EventStore, RunRecord, StepRecord
from agentflow.trace import _export, _tables
from agentflow.trace._records import Recorded, load_recorded, open_client

if TYPE_CHECKING:
    from langchain_core.tools import BaseTool
    from matplotlib.figure import Figure

    from agentflow.trace._replay import ReplayResult


class Ledger(Protocol):
    """Anything with an audit ledger of effects: rows with an `idempotency_key` each."""

    def effects(self) -> list[dict[str, Any]]: ...


class Trace:
    """A recorded run, read once from the store; tables are built on first access.

    Get one with `agentflow.trace.load`. Every table is a pandas DataFrame; times are UTC
    datetimes in the timebase of the clock that recorded the run (a time-skipping test clock
    makes durations zero).
    """

    def __init__(
        self, client: Client, recorded: Recorded, *, owns_client: bool = False, app: App | None = None
    ) -> None:
        self._client = client
        self._owns_client = owns_client
        self._app = app
        self._app_made = False  # whether `app` made the App (and so closes it)
        self.recorded = recorded

    # -- the run -----------------------------------------------------------------------------
    @property
    def run_id(self) -> str:
        return self.recorded.run_id

    @property
    def run(self) -> RunRecord:
        """The run's row (status, tenant, input, output, error, meta)."""
        return self.recorded.run

    @property
    def history(self) -> list[StepRecord]:
        """The raw recorded steps, in seq order."""
        return self.recorded.steps

    @property
    def client(self) -> Client:
        """The Client the trace reads with (reopens its store if it was closed)."""
        return self._client

    @property
    def store(self) -> EventStore:
        """The store the run was read from."""
        return self._client.store

    @property
    def app(self) -> App:
        """The App the trace was loaded from; for a trace loaded from a URL, an App on the
        same store and clock with nothing registered (made on first access)."""
        if self._app is None:
            self._app = App(self._client.db, clock=self._client.clock)
            self._app_made = True
        return self._app

    def close(self) -> None:
        """Close the store connection `load` opened for a URL, and the App `app` made (the
        trace stays readable)."""
        if self._owns_client:
            self._client.close()
        if self._app is not None and self._app_made:
            self._app.close()

    def __enter__(self) -> Trace:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        run = self.recorded.run
        return f"<Trace {run.id} {run.workflow} {run.status}, {len(self.recorded.steps)} steps>"

    # -- tables ------------------------------------------------------------------------------
    @cached_property
    def steps(self) -> pd.DataFrame:
        """seq, kind, name, status, attempt, started_at, finished_at, duration_s, epoch, error.

        `epoch` is the lease under which the step was recorded: it changes where another worker
        (or a resumed process) took the run over, e.g. after a crash."""
        return _tables.steps_table(self.recorded)

    @cached_property
    def attempts(self) -> pd.DataFrame:
        """Failed attempts of retried steps: seq, attempt, error, started_at, finished_at, retry_at."""
        return _tables.attempts_table(self.recorded)

    @cached_property
    def messages(self) -> pd.DataFrame:
        """The final conversation (the last model call's request and its response): index, seq,
        role, content, tool_calls, tool_call_id, name."""
        return _tables.messages_table(self.recorded)

    @cached_property
    def tool_calls(self) -> pd.DataFrame:
        """Tool steps: seq, call_id, tool, args, result, status (ok / error / unknown / retrying),
        attempt, decision (the last policy effect for the call), idempotency_key, error, times."""
        return _tables.tool_calls_table(self.recorded)

    @cached_property
    def decisions(self) -> pd.DataFrame:
        """Policy decisions: seq, call_id, tool, args, approved, effect, rule, reason, pack,
        pack_hash, defer_until, at."""
        return _tables.decisions_table(self.recorded)

    @cached_property
    def approvals(self) -> pd.DataFrame:
        """Approval requests of the run: id, call_id, tool, args, status, rule, requested_by,
        approved_by, votes (who, decision, when, comment), created/decided/expires times."""
        return _tables.approvals_table(self.recorded)

    @cached_property
    def audit(self) -> pd.DataFrame:
        """Audit records of the run's approvals (decisions and refusals, with their actors)."""
        return _tables.audit_table(self.recorded)

    @cached_property
    def usage(self) -> pd.DataFrame:
        """Per completed model call: seq, model, input/output/total tokens, cost_usd, source,
        finish_reason, duration_s. `total_usage` has the sums."""
        return _tables.usage_table(self.recorded)

    @property
    def total_usage(self) -> dict[str, Any]:
        """calls, input_tokens, output_tokens, total_tokens and cost_usd of the whole run."""
        return _tables.usage_total(self.recorded)

    def effects(self, ledger: Ledger) -> pd.DataFrame:
        """The ledger's effects caused by this run, beside the step that caused each.

        Args:
            ledger: any object whose `effects()` returns dicts with an `idempotency_key` (the
                key the engine hands to activities: `<run_id>:<seq>`), e.g. `agentflow_noc.Network`.
        """
        return _tables.effects_table(self.recorded, ledger.effects())

    # -- display -----------------------------------------------------------------------------
    @cached_property
    def timeline(self) -> dict[str, Any]:
        """The run as a timeline, in plain JSON values (what `agentflow.trace.timeline` returns
        and the web console draws): rows per step with their place on the axis, lease changes
        (`crash`, `resume`, `wake`), folded reads, totals and `story`."""
        from agentflow.trace._timeline import build_timeline

        return build_timeline(self.recorded)

    @property
    def what_happened(self) -> list[str]:
        """What happened in the run, in sentences: who asked, what the agent read, the policy's
        decisions and who approved, crashes and resumes, waits, changes, how it ended, the cost."""
        return list(self.timeline["story"])

    def _repr_html_(self) -> str:
        from agentflow.trace._html import timeline_html

        return timeline_html(self.timeline)

    def plot(self, *, width: float = 10.0) -> Figure:
        """The steps on the recorded clock (waits shortened, crashes and wakes marked) and the
        cost and tokens of each model call, as a matplotlib Figure (never shown in a window;
        Jupyter renders it inline, scripts call `savefig`)."""
        from agentflow.trace._plot import plot_figure

        return plot_figure(self.timeline, width=width)

    # -- replay, what-if, fork -----------------------------------------------------------------
    def replay(
        self, workflow_or_app: App | Workflow[Any, Any], *, activities: Sequence[Activity[Any, Any]] = (),
        timeout: float = 60.0,
    ) -> ReplayResult:  # fmt: skip
        """Re-run the current workflow code against this recorded history, all I/O forbidden.

        Runs on a temporary copy of the store: nothing is written to the original, and no model,
        tool or activity is executed (a finished run needs none: every step is recorded).

        Args:
            workflow_or_app: an App with the run's workflow (and its activities) registered, or
                the Workflow itself (then pass the activities it calls in `activities`).
            activities: see above.
            timeout: seconds before the replay is given up (`TimeoutError`).

        Returns:
            The replay's result: steps answered from the history, how it ended.

        Raises:
            NonDeterminismError: where the current code diverges from the recorded run.
            NotRegisteredError: the run's workflow is not registered on the App given.
        """
        from agentflow.trace._replay import replay_run

        return replay_run(self.recorded, self._client, workflow_or_app, activities=activities, timeout=timeout)

    def what_if(
        self, policies: PolicyPack | str | Path, *, tools: Sequence[BaseTool] = (), changed_only: bool = True
    ) -> pd.DataFrame:
        """Every recorded policy decision decided again under another pack; no model is called.

        Args:
            policies: a `PolicyPack` or the path of a pack file.
            tools: the agent's tools: their declared facts (read-only, tags, target, region)
                are what rules match on. Without them a tool counts as undeclared
                (side-effecting, no tags), which changes how most packs decide.
            changed_only: only the decisions that change (effect or rule); False lists all.

        Returns:
            seq, call_id, tool, args, approved, at, was_effect, was_rule, would_effect,
            would_rule, would_reason, changed. Rate and blast-radius limits are evaluated with
            no recent usage (other runs' calls are not rebuilt).
        """
        from agentflow.trace._whatif import what_if_table

        return what_if_table(self.recorded, policies, tools=tools, changed_only=changed_only, client=self._client)

    def fork(self, at_seq: int, *, run_id: str | None = None, meta: dict[str, Any] | None = None) -> RunHandle:
        """Start a new run that reuses this run's history up to step `at_seq` and continues live.

        The new run is pending until a worker serving the workflow drives it; its meta names
        the original (`forked_from`, `at_seq`). The limits are listed in
        `agentflow.trace._fork`'s docstring: idempotency keys are new (effects after the cut
        happen again), the cut must not split concurrent steps, approvals are not carried over.

        Args:
            at_seq: the last step kept (0: nothing kept, a fresh run with the same input).
            run_id: the new run's id (default `<run id>-fork-<random>`).
            meta: added to the new run's meta.
        """
        from agentflow.trace._fork import fork_run

        return fork_run(self._client, self.recorded, at_seq, run_id=run_id, meta=meta)

    # -- export ------------------------------------------------------------------------------
    def to_jsonl(self, path: str | Path) -> int:
        """Write the run, its steps (JSON decoded), failed attempts and approvals as JSON lines;
        return the number of lines."""
        return _export.write_jsonl(self.recorded, path)

    def jsonl(self) -> str:
        """What `to_jsonl` writes, as text (one JSON object per line)."""
        return _export.jsonl_text(self.recorded)

    def to_otel_spans(self) -> list[dict[str, Any]]:
        """The run as OpenTelemetry spans (dicts in the OTLP JSON shape) following the GenAI
        semantic conventions: `invoke_agent <workflow>` for the run, `chat <model>` per model
        call, `execute_tool <tool>` per tool call, and `<kind> <name>` for the other steps.
        Trace and span ids derive from (run id, seq): stable across exports and replays."""
        return _export.otel_spans(self.recorded)

    def export_otel(self, exporter: Any, *, service_name: str = "agentflow") -> int:
        """Send the spans of `to_otel_spans()` through an OpenTelemetry SDK `SpanExporter`
        (e.g. OTLP to your collector; ids stay stable across exports). Needs
        `pip install 'agentflow[otel]'`. Returns the number of spans exported."""
        from agentflow.trace._otel import export_spans

        return export_spans(self.recorded, exporter, service_name=service_name)


def load(db_url_or_app: App | Client | str, run_id: str) -> Trace:
    """Load a recorded run.

    Args:
        db_url_or_app: an App, a Client, or a store URL (`sqlite:///path`, `postgresql://...`).
        run_id: the run.

    Raises:
        UnknownRunError: no such run in the store.
    """
    client, owned = open_client(db_url_or_app)
    try:
        recorded = load_recorded(client, run_id)
    except BaseException:
        if owned:
            client.close()
        raise
    app = db_url_or_app if isinstance(db_url_or_app, App) else None
    return Trace(client, recorded, owns_client=owned, app=app)
