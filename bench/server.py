"""Web chat server benchmark: what serving a run's conversation costs, against reading it raw.

Run: `.venv/bin/python bench/server.py` (about 20 s). Prints ONE JSON object on stdout;
progress goes to stderr. Every figure is measured in the same run, on the same store.

Set-up: the NOC copilot (offline runbook model, NOC policy pack) run to completion through the
API on a SQLite file: one run of ~33 steps, one approval, operators alice and bob. Then
`--extra-runs` more runs are recorded so the store is not trivially small.

Figures (medians of `--reps`; each rep measures the API call and its baseline back to back):

raw_steps_s
    Baseline: `app.store.load_steps(run_id)`, the one query the history needs.
run_detail_s / ratio_run_detail_to_raw
    `GET /api/runs/{id}` through FastAPI's TestClient (in-process HTTP, auth by bearer token):
    the run summary, every step rendered as an event (message blobs decoded), the approval
    cards with what the caller may do.
poll_idle_s / ratio_poll_idle_to_raw
    One live-stream poll (`_poll`, the stream's own code) of a run parked on its approval with
    everything already sent: what each watcher costs the server every `poll_interval` (0.25 s by
    default). `watchers_per_core` = poll_interval / poll_idle_s.
stream_replay_s
    `GET /api/runs/{id}/stream` of the finished run from the start (every event, then `end`).
sign_in_s
    `POST /api/session` (token check, session row written in its own transaction).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from fastapi.testclient import TestClient

import agentflow_noc as noc
from agentflow import App
from agentflow.approvals import Approvals
from agentflow.chat import Chat, card
from agentflow.engine import SystemClock
from agentflow.server import create_app
from agentflow.server._stream import _Cursor, _poll
from agentflow_noc.demo import copilot, make_model

IN_WINDOW = 1_767_234_600.0  # 2026-01-01 02:30 UTC: inside the NOC pack's maintenance window


def log(*parts: Any) -> None:
    print(*parts, file=sys.stderr, flush=True)


def timed(fn: Any) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def wait_for(check: Any, timeout: float = 60.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = check()
        if found:
            return found
        time.sleep(0.02)
    raise SystemExit("timed out setting up the benchmark")


def record_run(client: TestClient, alice: str, bob: str) -> str:
    """Start a copilot run as alice, approve as bob, wait for the end: one run's id."""
    as_alice, as_bob = {"Authorization": f"Bearer {alice}"}, {"Authorization": f"Bearer {bob}"}
    run_id: str = client.post("/api/runs", json={"task": "CS-101 drop rate is high"}, headers=as_alice).json()["id"]
    card = wait_for(lambda: client.get(f"/api/runs/{run_id}", headers=as_bob).json()["approvals"])[0]
    client.post(f"/api/approvals/{card['id']}/approve", json={"seen_hash": card["args_hash"]}, headers=as_bob)
    wait_for(lambda: client.get(f"/api/runs/{run_id}", headers=as_bob).json()["status"] == "completed")
    return run_id


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=200)
    parser.add_argument("--extra-runs", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        net = noc.configure(Path(tmp) / "net.db")
        app = App(f"sqlite:///{tmp}/wf.db", clock=SystemClock(offset=IN_WINDOW - SystemClock().now()))
        copilot(make_model("runbook")).register(app)
        _, alice = Approvals.of(app).add_operator("alice", tenant="default", roles=["noc-engineer"])
        bob_p, bob = Approvals.of(app).add_operator("bob", tenant="default", roles=["noc-engineer"])
        with TestClient(create_app(app)) as client:
            log("recording runs ...")
            runs = []
            for _ in range(1 + args.extra_runs):
                net.inject("CS-101", "mis_set_handover")
                runs.append(record_run(client, alice, bob))
            run_id = runs[0]
            net.inject("CS-101", "mis_set_handover")
            waiting = client.post(
                "/api/runs", json={"task": "CS-101 again"}, headers={"Authorization": f"Bearer {alice}"}
            )
            waiting_id = waiting.json()["id"]
            wait_for(lambda: Approvals.of(app).list(run_id=waiting_id))
            steps = len(app.store.load_steps(run_id))
            headers = {"Authorization": f"Bearer {bob}"}
            samples: dict[str, list[float]] = {k: [] for k in ("raw", "detail", "poll", "ratio_d", "ratio_p")}
            chat = Chat.of(app)
            cursor = _Cursor(after=0)

            def make_card(req: Any, history: Any) -> dict[str, Any]:  # the chat core's card (idle polls make none)
                return card(chat, req, bob_p, history)

            wait_for(lambda: _poll(chat, waiting_id, bob_p, cursor, make_card)[0] == [])  # everything sent: now idle
            log(f"measuring {args.reps} reps on a {steps}-step run ...")
            for _ in range(args.reps):
                raw = timed(lambda: app.store.load_steps(run_id))
                detail = timed(lambda: client.get(f"/api/runs/{run_id}", headers=headers).raise_for_status())
                poll = timed(lambda: _poll(chat, waiting_id, bob_p, cursor, make_card))
                samples["raw"].append(raw)
                samples["detail"].append(detail)
                samples["poll"].append(poll)
                samples["ratio_d"].append(detail / raw)
                samples["ratio_p"].append(poll / raw)
            stream = [timed(lambda: _read_stream(client, run_id, headers)) for _ in range(20)]
            sign_in = [timed(lambda: client.post("/api/session", json={"token": alice})) for _ in range(50)]
    med = statistics.median
    poll_idle = med(samples["poll"])
    print(json.dumps({
        "steps": steps,
        "reps": args.reps,
        "raw_steps_s": med(samples["raw"]),
        "run_detail_s": med(samples["detail"]),
        "ratio_run_detail_to_raw": round(med(samples["ratio_d"]), 2),
        "poll_idle_s": poll_idle,
        "ratio_poll_idle_to_raw": round(med(samples["ratio_p"]), 2),
        "watchers_per_core": int(0.25 / poll_idle),
        "stream_replay_s": med(stream),
        "sign_in_s": med(sign_in),
    }))  # fmt: skip


def _read_stream(client: TestClient, run_id: str, headers: dict[str, str]) -> None:
    with client.stream("GET", f"/api/runs/{run_id}/stream", headers=headers) as body:
        for _ in body.iter_lines():
            pass


if __name__ == "__main__":
    main()
