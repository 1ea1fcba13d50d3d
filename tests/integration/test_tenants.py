"""Tenants are a hard boundary (issue 13): run ids are chosen per tenant, every statement a
tenant's request sends to the store carries that tenant, and two tenants guessing each other's
ids over every route read nothing and change nothing of the other.

The server runs in process (FastAPI's TestClient) on a real SQLite file, without a worker: runs
stay `pending`, and each tenant has an approval request made through the approvals service, as
the agent's gate makes them.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import celpy
import httpx
import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, Phase, settings
from hypothesis import strategies as st
from hypothesis.stateful import Bundle, RuleBasedStateMachine, rule
from support.sql_trace import trace_sqlite

from agentflow import App
from agentflow.agent import Agent
from agentflow.approvals import Approvals
from agentflow.errors import ConfigurationError
from agentflow.policy import ApprovalSpec, PolicyDecision
from agentflow.server import create_app
from agentflow.store import scoped_key
from agentflow_noc.demo import copilot, make_model

TENANTS = ("noc-east", "noc-west")
# Every tenant's task text carries its marker: a response that shows the other's is a leak.
MARKER = {"noc-east": "EASTMARK", "noc-west": "WESTMARK"}
OTHER = {"noc-east": "noc-west", "noc-west": "noc-east"}
RUN_IDS = ("incident-42", "a", "b")
# celpy raises the recursion limit when its first Environment is built (a policy decision);
# build one now, so hypothesis does not see the limit change in the middle of an example.
celpy.Environment()


@contextlib.contextmanager
def served(tmp: Path) -> Iterator[tuple[App, TestClient, dict[str, str], dict[str, str]]]:
    """An App with the copilot registered, one operator per tenant (tokens), and one approval
    request per tenant on a run `held` (approval ids), served without a worker."""
    app = App(f"sqlite:///{tmp / 'wf.db'}")
    try:
        agent: Agent = copilot(make_model("runbook"))
        agent.register(app)
        approvals = Approvals.of(app)
        tokens = {t: approvals.add_operator(f"op-{t}", tenant=t, roles=["noc-engineer"])[1] for t in TENANTS}
        decision = PolicyDecision(effect="require_approval", rule="change-approval", approval_rule="change-approval",
                                  approval=ApprovalSpec(roles=["noc-engineer"], four_eyes=False))  # fmt: skip
        held: dict[str, str] = {}
        for t in TENANTS:
            handle = agent.start(app, f"{MARKER[t]} held run", tenant=t, run_id="held", requested_by="agent")
            held[t] = approvals.request(run_id=handle.run_id, call_id="c1", tenant=t, requested_by="agent",
                                        tool="apply_change", args={"site": MARKER[t]}, decision=decision).id  # fmt: skip
        with TestClient(create_app(app, run_worker=False)) as client:
            yield app, client, tokens, held
    finally:
        app.close()


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def tenant_rows(app: App, tenant: str) -> dict[str, Any]:
    """Everything of `tenant` a request may change, straight from the tables."""
    q = app.store.backend.query
    runs = q("SELECT id, status, input, output, meta FROM af_runs WHERE tenant = ? ORDER BY id", (tenant,))
    ids = tuple(r[0] for r in runs)
    marks = ",".join("?" * len(ids)) or "''"
    return {
        "runs": runs,
        "steps": q(f"SELECT run_id, seq, status, result FROM af_steps WHERE run_id IN ({marks}) ORDER BY 1, 2", ids),
        "signals": q(f"SELECT run_id, name, payload FROM af_signals WHERE run_id IN ({marks}) ORDER BY id", ids),
        "approvals": q("SELECT id, status, args, revision FROM af_approvals WHERE tenant = ? ORDER BY id", (tenant,)),
        "votes": q(
            "SELECT v.approval_id, v.principal, v.decision FROM af_approval_votes v "
            "JOIN af_approvals a ON a.id = v.approval_id WHERE a.tenant = ? ORDER BY 1, 2",
            (tenant,),
        ),
    }


# -- run ids per tenant --------------------------------------------------------------------------
def test_two_tenants_may_use_the_same_run_id_and_neither_learns_of_the_other(tmp_path: Path) -> None:
    """Both tenants start `incident-42` (201 each, shown as `incident-42`); a second start in the
    same tenant is 409; each reads only its own; the other's key, a default-tenant key and
    malformed ids answer 404 like an id nobody used (issue 13 hole 9: 409 confirmed ids)."""
    with served(tmp_path) as (app, client, tokens, _):
        for t in TENANTS:
            sent = client.post("/api/runs", json={"task": f"{MARKER[t]} fix", "run_id": "incident-42"},
                               headers=bearer(tokens[t]))  # fmt: skip
            assert sent.status_code == 201, sent.text
            assert sent.json()["id"] == "incident-42" and sent.json()["tenant"] == t
        again = client.post(
            "/api/runs", json={"task": "again", "run_id": "incident-42"}, headers=bearer(tokens[TENANTS[0]])
        )
        assert again.status_code == 409 and again.json()["error"]["code"] == "run_exists"
        assert {r[0] for r in app.store.backend.query("SELECT id FROM af_runs WHERE id LIKE '%incident-42'")} == {
            "noc-east:incident-42", "noc-west:incident-42"}  # fmt: skip
        for t in TENANTS:
            for name in ("incident-42", f"{t}:incident-42"):  # its own id, or its own key
                got = client.get(f"/api/runs/{name}", headers=bearer(tokens[t]))
                assert got.status_code == 200 and MARKER[t] in got.text and MARKER[OTHER[t]] not in got.text
            for name in (f"{OTHER[t]}:incident-42", f"{OTHER[t]}:held", "default:held", "x:y", "held:x"):
                got = client.get(f"/api/runs/{name}", headers=bearer(tokens[t]))
                assert got.status_code == 404 and got.json()["error"]["code"] == "unknown_run", (name, got.text)
                assert OTHER[t] not in got.json()["error"]["message"].replace(name, "")
        taken = client.post(
            "/api/runs", json={"task": "x", "run_id": "noc-west:incident-42"}, headers=bearer(tokens["noc-east"])
        )
        assert taken.status_code == 422  # ':' is not part of a run id a caller chooses


def test_runs_keyed_before_ids_were_per_tenant_stay_their_tenants_only(tmp_path: Path) -> None:
    """A 0.1 store keyed runs of every tenant by their bare id. Such a run is still found by its
    tenant's operators (API and an idempotent start), never by another tenant, and its bare id
    cannot be taken over by a start in another tenant or the default one."""
    with served(tmp_path) as (app, client, tokens, _):
        app.store.create_run(run_id="old-1", workflow=app.client.get("noc-east:held").workflow, tenant="noc-east",
                             input='[["EASTMARK old"], {}]', now=0.0)  # fmt: skip
        got = client.get("/api/runs/old-1", headers=bearer(tokens["noc-east"]))
        assert got.status_code == 200 and got.json()["id"] == "old-1" and "EASTMARK old" in got.text
        assert client.get("/api/runs/old-1", headers=bearer(tokens["noc-west"])).status_code == 404
        again = client.post("/api/runs", json={"task": "again", "run_id": "old-1"}, headers=bearer(tokens["noc-east"]))
        assert again.status_code == 409
        west = client.post(
            "/api/runs", json={"task": "WESTMARK", "run_id": "old-1"}, headers=bearer(tokens["noc-west"])
        )
        assert west.status_code == 201 and app.client.get("noc-west:old-1").tenant == "noc-west"
        with pytest.raises(ConfigurationError, match="'old-1' is taken in this store"):
            app.client.start(app.client.get("old-1").workflow, "x", run_id="old-1")
        assert app.store.get_run("old-1").input == '[["EASTMARK old"], {}]'  # untouched


@pytest.mark.parametrize("given", ["r", "noc-east:r", "r/3", "noc-east:r/3"])
def test_scoped_keys_name_only_the_callers_runs(given: str) -> None:
    """A caller's id becomes a key of its own tenant; another tenant's key never does."""
    key = scoped_key("noc-east", given)
    assert key is not None and key.startswith("noc-east:r")
    assert scoped_key("noc-west", key) is None and scoped_key("default", key) is None


# -- every statement of a tenant's request carries the tenant -------------------------------------
# Statements that find out *who* calls, before any tenant is known, and tables no tenant owns.
_AUTHENTICATION = re.compile(r"FROM af_operator_tokens t JOIN af_principals p .* WHERE t\.token_hash = |"
                             r"af_sessions WHERE id_hash", re.I)  # fmt: skip
_TENANTLESS_TABLES = ("af_blobs", "af_settings", "af_alembic_version", "sqlite_master")
_TABLE = re.compile(r"\baf_[a-z_]+\b")


def test_every_statement_of_a_tenants_request_names_that_tenant(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The store's SQLite connections report every statement with its bound values; every route
    is called as noc-east (with its own ids and with noc-west's): each statement on an agentflow
    table names noc-east (a `tenant = 'noc-east'` predicate or a `noc-east:` run key), none names
    noc-west, except the ones that authenticate the caller."""
    with served(tmp_path) as (app, client, tokens, held):
        east, west = bearer(tokens["noc-east"]), bearer(tokens["noc-west"])
        assert client.post("/api/runs", json={"task": "EASTMARK", "run_id": "e1"}, headers=east).status_code == 201
        assert client.post("/api/runs", json={"task": "WESTMARK", "run_id": "e1"}, headers=west).status_code == 201
        statements = trace_sqlite(monkeypatch)
        probe_app = App(app.db)  # a fresh store: its connections are made (and traced) from here on
        copilot(make_model("runbook")).register(probe_app)
        with TestClient(create_app(probe_app, run_worker=False)) as probe:
            statements.clear()
            calls: list[tuple[str, str, dict[str, Any] | None]] = [("GET", "/api/runs", None), ("GET", "/api/approvals?status=all", None),
                     ("GET", "/api/runs?q=MARK&tool=apply_change&target=WESTMARK&requested_by=op-noc-west&since=0&until=9e9", None),
                     ("GET", "/api/runs?status=pending&limit=1", None), ("GET", "/api/approvals?status=pending&evidence=false", None),
                     ("POST", "/api/runs", {"task": "EASTMARK 2", "run_id": "e2"}), ("POST", "/api/runs", {"task": "x", "run_id": "e1"})]  # fmt: skip
            for rid in ("e1", "held", "noc-east:e1", "noc-west:e1", "noc-west:held", "missing"):
                calls += [("GET", f"/api/runs/{rid}", None), ("GET", f"/api/runs/{rid}/events", None),
                          ("GET", f"/api/runs/{rid}/trace.jsonl", None), ("GET", f"/api/runs/{rid}/timeline", None),
                          ("POST", f"/api/runs/{rid}/messages", {"text": "status"}),
                          ("POST", f"/api/runs/{rid}/messages", {"text": "why?"})]  # fmt: skip
            for aid in (held["noc-east"], held["noc-west"]):
                calls += [
                    ("GET", f"/api/approvals/{aid}", None),
                    ("POST", f"/api/approvals/{aid}/reject", {"comment": "no"}),
                ]
            for method, url, body in calls:
                before = len(statements)
                answer = probe.request(method, url, json=body, headers=east)
                assert answer.status_code < 500, (url, answer.text)
                assert "WESTMARK" not in answer.text, url
                for sql in statements[before:]:
                    tables = set(_TABLE.findall(sql)) - set(_TENANTLESS_TABLES)
                    if not tables or _AUTHENTICATION.search(sql):
                        continue
                    assert "noc-west" not in sql, (url, sql)
                    assert "'noc-east" in sql, f"{method} {url} sent a statement without its tenant: {sql}"
            # A live stream of a pending run never ends here (no worker): only refused ones are called.
            for rid in ("noc-west:e1", "noc-west:held", "missing"):
                before = len(statements)
                assert probe.get(f"/api/runs/{rid}/stream", headers=east).status_code == 404
                assert all("noc-west" not in sql for sql in statements[before:])
            assert len(statements) > 100  # the hook saw the requests' statements
        probe_app.close()


# -- two tenants guessing each other's ids ---------------------------------------------------------
class TwoTenants(RuleBasedStateMachine):
    """Two tenants start, read, stream, export, message and decide over each other's ids; a
    model of each tenant's runs predicts every answer; after every call, the other tenant's
    rows are exactly what they were and the answer does not show the other tenant's marker."""

    runs = Bundle("runs")

    def __init__(self) -> None:
        super().__init__()
        self._stack = contextlib.ExitStack()
        tmp = Path(self._stack.enter_context(_tempdir()))
        self.app, self.client, self.tokens, self.held = self._stack.enter_context(served(tmp))
        self.model: dict[str, set[str]] = {t: {"held"} for t in TENANTS}
        self.open: dict[str, bool] = {t: True for t in TENANTS}

    def teardown(self) -> None:
        self._stack.close()

    def _call(self, tenant: str, method: str, url: str, body: dict[str, Any] | None = None) -> httpx.Response:
        """Call as `tenant`; the other tenant's rows must not change and its marker not show."""
        other = OTHER[tenant]
        before = tenant_rows(self.app, other)
        answer = self.client.request(method, url, json=body, headers=bearer(self.tokens[tenant]))
        assert answer.status_code < 500, answer.text
        assert MARKER[other] not in answer.text, f"{tenant} read {other}'s data: {method} {url} -> {answer.text[:300]}"
        assert tenant_rows(self.app, other) == before, f"{tenant} changed {other}'s rows: {method} {url}"
        return answer

    @rule(target=runs, tenant=st.sampled_from(TENANTS), run_id=st.sampled_from(RUN_IDS))
    def start(self, tenant: str, run_id: str) -> str:
        answer = self._call(tenant, "POST", "/api/runs", {"task": f"{MARKER[tenant]} {run_id}", "run_id": run_id})
        assert answer.status_code == (409 if run_id in self.model[tenant] else 201), answer.text
        self.model[tenant].add(run_id)
        return f"{tenant}:{run_id}"

    @rule(tenant=st.sampled_from(TENANTS), key=runs,
          form=st.sampled_from(["local", "key"]),
          route=st.sampled_from(["", "/events", "/trace.jsonl", "/timeline", "/messages"]))  # fmt: skip
    def read(self, tenant: str, key: str, form: str, route: str) -> None:
        owner, local = key.split(":", 1)
        name = local if form == "local" else key
        body = {"text": "status"} if route == "/messages" else None
        answer = self._call(tenant, "POST" if body else "GET", f"/api/runs/{name}{route}", body)
        mine = owner == tenant or (form == "local" and local in self.model[tenant])
        assert answer.status_code == (200 if mine else 404), (tenant, name, route, answer.text)

    @rule(
        tenant=st.sampled_from(TENANTS),
        whose=st.sampled_from(TENANTS),
        verb=st.sampled_from(["approve", "reject", "get"]),
    )
    def decide(self, tenant: str, whose: str, verb: str) -> None:
        aid = self.held[whose]
        if verb == "get":
            answer = self._call(tenant, "GET", f"/api/approvals/{aid}")
            assert answer.status_code == (200 if tenant == whose else 404)
            return
        body = {"comment": "no"} if verb == "reject" else {}
        answer = self._call(tenant, "POST", f"/api/approvals/{aid}/{verb}", body)
        if tenant != whose:
            assert answer.status_code == 404 and answer.json()["error"]["code"] == "unknown"
        elif self.open[whose]:
            assert answer.status_code == 200, answer.text
            self.open[whose] = False
        else:
            assert answer.status_code == 409

    @rule(tenant=st.sampled_from(TENANTS))
    def list_runs(self, tenant: str) -> None:
        answer = self._call(tenant, "GET", "/api/runs?limit=500")
        assert {r["id"] for r in answer.json()["runs"]} == self.model[tenant]
        listed = self._call(tenant, "GET", "/api/approvals?status=all").json()["approvals"]
        assert [c["id"] for c in listed] == [self.held[tenant]] and listed[0]["run_id"] == "held"


@contextlib.contextmanager
def _tempdir() -> Iterator[str]:
    import tempfile

    with tempfile.TemporaryDirectory(prefix="af-tenants-") as d:
        yield d


TestTwoTenants = TwoTenants.TestCase
TestTwoTenants.settings = settings(
    max_examples=12,
    stateful_step_count=25,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
    # Each example is a fresh store and server: shrinking a failure would take minutes; the
    # failing call is named by the assertion and the steps are printed.
    phases=[Phase.explicit, Phase.reuse, Phase.generate],
)
