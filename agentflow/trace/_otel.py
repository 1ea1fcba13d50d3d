"""The run's spans through the OpenTelemetry SDK, to any `SpanExporter` (OTLP to a collector,
the console, an in-memory exporter in tests). Needs the `otel` extra (`opentelemetry-sdk`).

The spans are the ones `Trace.to_otel_spans()` describes (GenAI semantic conventions), with the
same stable ids: exporting a run twice, or after a replay, yields the same trace and span ids, so
a backend deduplicates instead of showing the run twice. Live spans (`_live`) are made into SDK
spans by the same `readable_span`.
"""

from __future__ import annotations

from typing import Any

from agentflow.errors import ConfigurationError
from agentflow.trace._export import otel_spans
from agentflow.trace._records import Recorded


def sdk() -> Any:
    """`opentelemetry.sdk.trace` (imported on first use), or a ConfigurationError saying what to install."""
    try:
        import opentelemetry.sdk.trace as sdk_trace
    except ImportError as exc:
        raise ConfigurationError(f"OpenTelemetry spans need `pip install 'agentflow[otel]'` ({exc})") from None
    return sdk_trace


def readable_span(d: dict[str, Any], resource: Any, scope: Any) -> Any:
    """An SDK `ReadableSpan` of a span dict (`_export.step_span` / `run_span`), with its ids."""
    from opentelemetry.sdk.trace import ReadableSpan
    from opentelemetry.trace import SpanContext, SpanKind, Status, StatusCode, TraceFlags

    def context(span_id: str) -> SpanContext:
        return SpanContext(int(d["trace_id"], 16), int(span_id, 16), is_remote=False,
                           trace_flags=TraceFlags(TraceFlags.SAMPLED))  # fmt: skip

    status = d["status"]
    return ReadableSpan(
        name=d["name"],
        context=context(d["span_id"]),
        parent=context(d["parent_span_id"]) if d["parent_span_id"] else None,
        resource=resource,
        attributes={k: v for k, v in d["attributes"].items() if v is not None},
        kind=SpanKind[d["kind"]],
        status=Status(StatusCode[status["code"]], status.get("description")),
        start_time=d["start_time_unix_nano"],
        end_time=d["end_time_unix_nano"],
        instrumentation_scope=scope,
    )


def export_spans(recorded: Recorded, exporter: Any, *, service_name: str = "agentflow") -> int:
    """Export the run's spans with `exporter` (an `opentelemetry.sdk.trace.export.SpanExporter`);
    return how many were exported.

    Raises:
        ConfigurationError: opentelemetry-sdk is not installed, or the exporter failed.
    """
    sdk()
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace.export import SpanExportResult
    from opentelemetry.sdk.util.instrumentation import InstrumentationScope

    resource = Resource.create({"service.name": service_name})
    scope = InstrumentationScope("agentflow.trace")
    spans = [readable_span(d, resource, scope) for d in otel_spans(recorded)]
    if exporter.export(spans) != SpanExportResult.SUCCESS:
        raise ConfigurationError(f"the span exporter {type(exporter).__name__} reported a failure")
    return len(spans)
