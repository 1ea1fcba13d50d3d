"""Live OpenTelemetry spans: each step is sent as a span when its outcome is recorded, so a
tracing backend (Tempo, Jaeger, Langfuse...) shows a run while it runs, not only once exported.

The spans are `_export`'s (`step_span`, `run_span`: GenAI semantic conventions for model calls
and tool calls) with its ids: the trace id is derived from the root run's id and a span id from
(run id, seq). A run resumed on another worker after a crash goes on in the same trace, and a
step that a replay answers from the history is not sent again (the engine reports a step once,
when it is executed and recorded; see `agentflow.engine.Observer`). The run's own span is sent
when the run ends. A step executed again because a crash lost its recorded outcome is sent again
with the same ids, which a backend treats as the same span.

Opt-in, and `opentelemetry-sdk` is imported only here: `pip install 'agentflow[otel]'`.
"""

from __future__ import annotations

import os
from typing import Any

from agentflow.engine import Observer, add_observer, remove_observer
from agentflow.errors import ConfigurationError
from agentflow.store import RunRecord, StepRecord
from agentflow.trace._export import run_span, step_span
from agentflow.trace._otel import readable_span, sdk
from agentflow.trace._records import describe_error

#: What `AGENTFLOW_OTEL` may say: `1`/`otlp` (OTLP/HTTP exporter, configured by the standard
#: `OTEL_EXPORTER_OTLP_*` variables) or `console` (spans as JSON lines on stdout).
ENV = "AGENTFLOW_OTEL"


class LiveSpans(Observer):
    """Sends the spans of the steps this process executes, as they finish (see the module).

    Args:
        tracer_provider: an SDK `TracerProvider`: its span processors (and so its exporters)
            get the spans, and its resource names the service.
        processor: instead of a provider, a `SpanProcessor` (e.g. a `BatchSpanProcessor`
            around an exporter) that gets each span's end.
        service_name: `service.name` of the spans when `processor` is given.
    """

    def __init__(self, tracer_provider: Any = None, *, processor: Any = None, service_name: str = "agentflow") -> None:
        sdk_trace = sdk()
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.util.instrumentation import InstrumentationScope

        if (tracer_provider is None) == (processor is None):
            raise ConfigurationError("LiveSpans takes a tracer_provider or a processor (one of them)")
        if tracer_provider is not None:
            if not isinstance(tracer_provider, sdk_trace.TracerProvider):
                raise ConfigurationError(
                    f"live spans need an OpenTelemetry SDK TracerProvider, not {type(tracer_provider).__name__}: "
                    "create one with opentelemetry.sdk.trace.TracerProvider and add your exporter's processor"
                )
            # The SDK has no public call that ends a span with ids chosen by the caller (ours are
            # derived from the run), so the spans go to the provider's processors directly.
            processor = tracer_provider._active_span_processor
            self.resource = tracer_provider.resource
        else:
            self.resource = Resource.create({"service.name": service_name})
        self.processor = processor
        self.scope = InstrumentationScope("agentflow")
        #: `close()` shuts the processor down (its thread, its exporter) only when this made it.
        self.owns_processor = False

    def step_finished(self, run: RunRecord, step: StepRecord) -> None:
        self.processor.on_end(readable_span(step_span(run, step), self.resource, self.scope))

    def run_finished(self, run: RunRecord, status: str, at: float, *, error: dict[str, Any] | None = None) -> None:
        span = run_span(run, end=at, status=status, error=describe_error(error) if error else None)
        self.processor.on_end(readable_span(span, self.resource, self.scope))

    def close(self) -> None:
        """Stop sending spans and flush what the processor holds; a processor made here
        (`live_spans_from_env`) is shut down too, a caller's provider or processor is not."""
        remove_observer(self)
        self.processor.force_flush()
        if self.owns_processor:
            self.processor.shutdown()


def live_spans(tracer_provider: Any = None, *, processor: Any = None, service_name: str = "agentflow") -> LiveSpans:
    """Send this process's steps as spans from now on (see `LiveSpans`); `close()` stops it.

    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

    provider = TracerProvider()
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    agentflow.trace.live_spans(provider)
    """
    spans = LiveSpans(tracer_provider, processor=processor, service_name=service_name)
    add_observer(spans)
    return spans


def live_spans_from_env() -> LiveSpans | None:
    """Live spans as `AGENTFLOW_OTEL` says (what `agentflow worker` and `serve` call): unset or
    `0`, none; `1` or `otlp`, an OTLP exporter (`pip install opentelemetry-exporter-otlp-proto-http`;
    endpoint and headers from the standard `OTEL_EXPORTER_OTLP_*` variables); `console`, JSON
    lines on stdout. `OTEL_SERVICE_NAME` names the service (default `agentflow`).

    Raises:
        ConfigurationError: the SDK or the OTLP exporter is not installed, or the value is unknown.
    """
    mode = os.environ.get(ENV, "").strip().lower()
    if mode in ("", "0", "false", "no"):
        return None
    sdk()
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SimpleSpanProcessor

    service = os.environ.get("OTEL_SERVICE_NAME") or "agentflow"
    if mode == "console":
        # One span per line, written as it ends: a SIGKILLed worker loses none it had sent.
        exporter = ConsoleSpanExporter(service_name=service, formatter=lambda span: span.to_json(indent=None) + "\n")
        return _owned(live_spans(processor=SimpleSpanProcessor(exporter), service_name=service))
    if mode not in ("1", "true", "yes", "otlp"):
        raise ConfigurationError(f"{ENV}={mode!r} is not understood: use 1 (OTLP), console, or 0 (off)")
    try:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import (  # type: ignore[import-not-found, unused-ignore]
            OTLPSpanExporter,
        )
    except ImportError:
        raise ConfigurationError(
            f"{ENV}=1 sends spans over OTLP, which needs `pip install opentelemetry-exporter-otlp-proto-http` "
            f"(or set {ENV}=console, or call agentflow.trace.live_spans(provider) from your app module)"
        ) from None
    return _owned(live_spans(processor=BatchSpanProcessor(OTLPSpanExporter()), service_name=service))


def _owned(spans: LiveSpans) -> LiveSpans:
    spans.owns_processor = True
    return spans
