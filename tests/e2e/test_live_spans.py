"""Live OpenTelemetry spans in process, through the SDK's InMemorySpanExporter: GenAI attributes
on model calls, one span per executed step with ids derived from (run id, seq), the same spans as
the after-the-fact export, nothing sent again when a parked run resumes; and the optional parts
(OpenTelemetry, prometheus-client) are not imported by `import agentflow`."""

from __future__ import annotations

import asyncio
import json
import logging
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import obsapp
import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import ConsoleSpanExporter, SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode

from agentflow import App, WorkflowContext, trace
from agentflow.cli._logging import EventFormatter, LogFormat

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def exporter() -> Iterator[InMemorySpanExporter]:
    found = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(found))
    spans = trace.live_spans(provider)
    try:
        yield found
    finally:
        spans.close()


def by_seq(exporter: InMemorySpanExporter) -> dict[int, Any]:
    found = exporter.get_finished_spans()
    seqs = {int((s.attributes or {}).get("agentflow.seq", 0)): s for s in found}
    assert len(seqs) == len(found), "a step was sent twice"
    return seqs


def test_model_calls_carry_genai_attributes_and_stable_ids(tmp_path: Path, exporter: InMemorySpanExporter) -> None:
    """Each executed step of an agent run is one span, sent as it finishes: model calls with
    gen_ai.* attributes and the recorded usage; ids and names equal the after-the-fact export's."""
    db = f"sqlite:///{tmp_path}/wf.db"
    app, agent = obsapp.build(db)
    run_id = agent.start(app, "check CS-101", run_id="live-1").run_id
    asyncio.run(app.worker().run_until_done(run_id))
    steps = {s.seq: s for s in app.history(run_id)}
    spans = by_seq(exporter)
    assert set(spans) == {0, *steps}
    for seq, step in steps.items():
        if step.kind != "llm":
            continue
        attrs = spans[seq].attributes
        usage = json.loads(step.result or "{}")["usage"]
        assert attrs["gen_ai.operation.name"] == "chat" and attrs["gen_ai.request.model"] == "scripted"
        assert attrs["gen_ai.system"] and attrs["gen_ai.usage.input_tokens"] == usage["input_tokens"] > 0
        assert attrs["gen_ai.usage.output_tokens"] == usage["output_tokens"]
    assert spans[3].attributes["gen_ai.tool.name"] == "kpis"
    exported = {int(s["span_id"], 16): s for s in trace.load(db, run_id).to_otel_spans()}
    for span in spans.values():
        ours = exported[span.context.span_id]
        assert span.context.trace_id == int(ours["trace_id"], 16) and span.name == ours["name"]
        assert (span.parent.span_id if span.parent else None) == (
            int(ours["parent_span_id"], 16) if ours["parent_span_id"] else None
        )
    app.close()


def test_a_resumed_run_continues_its_trace_without_resending(tmp_path: Path, exporter: InMemorySpanExporter) -> None:
    """A run parked on a signal and resumed by another worker: the first step's span is sent
    once (the replay does not send it again), the later step and the run's span join the same
    trace."""
    app, _ = obsapp.build(f"sqlite:///{tmp_path}/wf.db")
    run_id = app.start(app.workflow_named("tick_wait"), run_id="park-1").run_id
    asyncio.run(app.worker().run_until_blocked(run_id))
    assert set(by_seq(exporter)) == {1}
    app.signal(run_id, "go")
    asyncio.run(app.worker().run_until_done(run_id))
    spans = by_seq(exporter)
    assert set(spans) == {0, 1, 3}  # seq 2 is the signal: a wait, not executed work
    assert len({s.context.trace_id for s in spans.values()}) == 1
    app.close()


def test_json_log_lines_mask_secrets_in_fields() -> None:
    """The one formatter masks secrets in the message and in every extra field (a failing step's
    error may quote a token), whichever logger wrote the record."""
    record = logging.LogRecord("some.library", logging.WARNING, __file__, 1, "token %s", ("aft_" + "x" * 40,), None)
    record.__dict__.update(run_id="r1", detail={"auth": "sk-" + "a" * 32}, note="Bearer " + "b" * 40)
    line = json.loads(EventFormatter(LogFormat.json).format(record))
    assert line["run_id"] == "r1" and line["level"] == "warning" and line["logger"] == "some.library"
    assert "x" * 40 not in line["msg"] and "a" * 32 not in json.dumps(line) and "b" * 40 not in line["note"]


def test_import_agentflow_loads_no_optional_observability() -> None:
    """OpenTelemetry and prometheus-client are imported only by a process that uses them."""
    code = "import sys, agentflow, agentflow.trace, agentflow.engine; print(sorted(sys.modules))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=60)
    loaded = json.loads(done.stdout.replace("'", '"'))
    assert [m for m in loaded if m.startswith(("opentelemetry", "prometheus_client", "pandas"))] == []


def test_a_failed_run_span_says_its_error_with_secrets_masked(tmp_path: Path, exporter: InMemorySpanExporter) -> None:
    """A workflow that raises: the run's live span is ERROR with `Type: message` of the recorded
    error (not "None"), a secret in the message masked, the same as the after-the-fact export."""
    db = f"sqlite:///{tmp_path}/wf.db"
    app = App(db)
    secret = "sk-" + "q" * 40

    @app.workflow(name="breaks")
    async def breaks(ctx: WorkflowContext) -> None:
        raise ValueError(f"the element refused the change (key {secret})")

    run_id = app.start(breaks, run_id="fails-1").run_id
    asyncio.run(app.worker().run_until_done(run_id))
    (span,) = by_seq(exporter).values()
    assert span.status.status_code is StatusCode.ERROR
    description = span.status.description or ""
    assert description.startswith("ValueError: the element refused the change (key "), description
    assert secret not in description and "q" * 40 not in description
    (exported,) = trace.load(db, run_id).to_otel_spans()
    assert exported["status"] == {"code": "ERROR", "description": description}
    app.close()


def test_close_shuts_down_only_the_processor_it_made(monkeypatch: pytest.MonkeyPatch) -> None:
    """`close()` leaves a caller's provider working, and shuts down the processor (and so the
    exporter) that `live_spans_from_env` made."""
    found = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(found))
    trace.live_spans(provider).close()
    provider.get_tracer("t").start_span("after close").end()
    assert [s.name for s in found.get_finished_spans()] == ["after close"]  # not shut down

    shut: list[str] = []
    monkeypatch.setattr(ConsoleSpanExporter, "shutdown", lambda self: shut.append("console"))
    monkeypatch.setenv("AGENTFLOW_OTEL", "console")
    spans = trace.live_spans_from_env()
    assert spans is not None
    spans.close()
    assert shut == ["console"]
