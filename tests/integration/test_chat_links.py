"""Delegated identity: chat accounts linked to operators per tenant (`Approvals.link`, `linked`,
`unlink`, `links`), on SQLite and PostgreSQL. A chat account acts as its operator only while a
token of theirs would be accepted; an unlinked account is refused with the command that links it."""

from __future__ import annotations

import pytest

from agentflow import App
from agentflow.approvals import Approvals, ChatAccount
from agentflow.errors import AuthenticationError, ConfigurationError

pytestmark = pytest.mark.backends("sqlite", "postgresql")
EAST, WEST = "noc-east", "noc-west"


@pytest.fixture
def approvals(app: App) -> Approvals:
    app.store.ensure_schema()
    service = Approvals.of(app)
    service.add_operator("bob", tenant=EAST, roles=["noc-engineer"])
    service.add_operator("carol", tenant=EAST, roles=["noc-engineer"])
    service.add_operator("bob", tenant=WEST, roles=["noc-engineer"])
    return service


def test_a_linked_account_acts_as_its_operator_of_that_tenant_only(approvals: Approvals) -> None:
    """Linking is per tenant: the account is bob of noc-east there, and nobody in noc-west."""
    linked = approvals.link("bob", surface="matrix", account="@bob:example.org", tenant=EAST)
    assert isinstance(linked, ChatAccount) and (linked.operator, linked.tenant) == ("bob", EAST)
    who = approvals.linked("matrix", "@bob:example.org", tenant=EAST)
    assert (who.name, who.tenant, who.roles) == ("bob", EAST, ["noc-engineer"])
    assert who.id == approvals.operator("bob", tenant=EAST).id
    with pytest.raises(AuthenticationError) as refused:
        approvals.linked("matrix", "@bob:example.org", tenant=WEST)
    assert refused.value.code == "unlinked"
    assert "agentflow operators link NAME --matrix @bob:example.org --tenant noc-west" in refused.value.message
    with pytest.raises(AuthenticationError, match="not linked"):
        approvals.linked("slack", "@bob:example.org", tenant=EAST)  # another surface: another account
    # Linking again to the same operator changes nothing; links() lists it once.
    assert approvals.link("bob", surface="matrix", account="@bob:example.org", tenant=EAST) == linked
    assert approvals.links(EAST) == [linked] and approvals.links(WEST) == []


def test_an_account_linked_to_another_operator_is_refused_saying_so(approvals: Approvals) -> None:
    approvals.link("bob", surface="slack", account="U0BOB", tenant=EAST)
    with pytest.raises(ConfigurationError) as refused:
        approvals.link("carol", surface="slack", account="U0BOB", tenant=EAST)
    assert "already linked to operator bob of tenant noc-east" in refused.value.message
    assert "agentflow operators unlink --slack U0BOB --tenant noc-east" in refused.value.message
    assert approvals.linked("slack", "U0BOB", tenant=EAST).name == "bob"  # unchanged
    # The same account may be linked in another tenant, to that tenant's operator.
    approvals.link("bob", surface="slack", account="U0BOB", tenant=WEST)
    with pytest.raises(ConfigurationError, match="several tenants"):
        approvals.unlink(surface="slack", account="U0BOB")
    gone = approvals.unlink(surface="slack", account="U0BOB", tenant=EAST)
    assert (gone.operator, gone.tenant) == ("bob", EAST)
    with pytest.raises(AuthenticationError, match="not linked"):
        approvals.linked("slack", "U0BOB", tenant=EAST)
    assert approvals.linked("slack", "U0BOB", tenant=WEST).tenant == WEST
    approvals.link("carol", surface="slack", account="U0BOB", tenant=EAST)  # free again
    assert approvals.linked("slack", "U0BOB", tenant=EAST).name == "carol"
    actions = [(a.action, a.reason) for a in approvals.audit() if a.action.startswith("account_")]
    assert ("account_unlinked", "slack U0BOB -> bob") in actions and len(actions) == 4


@pytest.mark.parametrize(
    ("surface", "account"),
    [("matrix", "bob"), ("matrix", "Bob Smith"), ("matrix", "@Bob:example.org"), ("matrix", "@bob:"),
     ("matrix", "@bob:ex ample.org"), ("matrix", "@bob:example.org\n"), ("slack", "bob"), ("slack", "u123"),
     ("slack", "U1"), ("teams", "U123"), ("matrix", "@" + "a" * 300 + ":x.org")],
)  # fmt: skip
def test_an_account_that_is_not_a_user_id_of_its_surface_is_refused(
    approvals: Approvals, surface: str, account: str
) -> None:
    """Display names (anyone can set one) and other surfaces' ids are not accounts."""
    with pytest.raises(ConfigurationError, match=r"not a .* user id|unknown chat surface"):
        approvals.link("bob", surface=surface, account=account, tenant=EAST)
    assert approvals.links() == []


def test_accepted_account_spellings(approvals: Approvals) -> None:
    for account in ("@bob:localhost", "@b.o_b=1/x+y-z:matrix.example.org:8448", "@bob:[::1]:8008", "@b:10.0.0.1"):
        approvals.link("bob", surface="matrix", account=account, tenant=EAST)
    for account in ("U0123ABCD", "W0123ABCD"):
        approvals.link("carol", surface="slack", account=account, tenant=EAST)
    assert len(approvals.links(EAST)) == 6


def test_a_disabled_or_revoked_operator_is_refused_like_their_token(approvals: Approvals) -> None:
    """The chat account is no back door: disabled → operator_disabled, every token revoked →
    token_revoked, each with the command that fixes it; enable/rotate bring it back."""
    approvals.link("bob", surface="matrix", account="@bob:example.org", tenant=EAST)
    approvals.disable("bob", tenant=EAST)
    with pytest.raises(AuthenticationError) as refused:
        approvals.linked("matrix", "@bob:example.org", tenant=EAST)
    assert refused.value.code == "operator_disabled"
    assert "agentflow operators enable bob --tenant noc-east" in refused.value.message
    approvals.enable("bob", tenant=EAST)
    assert approvals.linked("matrix", "@bob:example.org", tenant=EAST).name == "bob"
    approvals.revoke("bob", tenant=EAST)
    with pytest.raises(AuthenticationError) as revoked:
        approvals.linked("matrix", "@bob:example.org", tenant=EAST)
    assert revoked.value.code == "token_revoked" and "operators rotate bob" in revoked.value.message
    approvals.rotate("bob", tenant=EAST)
    assert approvals.linked("matrix", "@bob:example.org", tenant=EAST).name == "bob"
    refusals = [a for a in approvals.audit() if a.action == "authenticate" and a.outcome == "refused"]
    assert [a.actor for a in refusals] == ["matrix:@bob:example.org"] * 2


def test_unlinking_what_is_not_linked_and_linking_an_unknown_operator_say_how(approvals: Approvals) -> None:
    with pytest.raises(ConfigurationError, match="not linked in tenant noc-east"):
        approvals.unlink(surface="matrix", account="@x:example.org", tenant=EAST)
    with pytest.raises(ConfigurationError, match="no operator 'zed'"):
        approvals.link("zed", surface="matrix", account="@x:example.org", tenant=EAST)
    with pytest.raises(ConfigurationError, match="several tenants"):
        approvals.link("bob", surface="matrix", account="@x:example.org")  # bob of east or west?
