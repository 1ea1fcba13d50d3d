"""Webhook signatures (issue 17): deliveries are signed the Standard Webhooks way, so a receiver
may verify them with `agentflow.webhooks.verify` or the `standardwebhooks` library (and ours
accepts theirs); a wrong secret, a changed body, a stale or future timestamp or a missing header
is a `SignatureError` with a code; `Receiver` acknowledges a replayed or retried id as a duplicate."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime

import pytest
from standardwebhooks import Webhook, WebhookVerificationError

from agentflow.errors import ConfigurationError, SignatureError
from agentflow.webhooks import Receiver, new_secret, sign, verify

NOW = 1_800_000_000
BODY = b'{"id":"evt_1","type":"run.finished","tenant":"acme","data":{"run_id":"r1"}}'


def test_the_published_standard_webhooks_vector() -> None:
    """The example of the Standard Webhooks spec (secret, id, timestamp, body -> signature)."""
    headers = sign("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330,
                   '{"test": 2432232314}')  # fmt: skip
    assert headers == {
        "webhook-id": "msg_p5jXN8AQM9LWM0D4loKWxJek",
        "webhook-timestamp": "1614265330",
        "webhook-signature": "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=",
    }


def test_a_signed_delivery_verifies_and_returns_its_event() -> None:
    secret = new_secret()
    assert secret.startswith("whsec_") and secret != new_secret()
    assert verify(secret, sign(secret, "evt_1", NOW, BODY), BODY, now=NOW + 299)["data"] == {"run_id": "r1"}
    upper = {k.upper(): v for k, v in sign(secret, "evt_1", NOW, BODY).items()}  # header names have no case
    assert verify(secret, upper, BODY.decode(), now=NOW)["id"] == "evt_1"


@pytest.mark.parametrize(
    ("change", "code"),
    [
        ("wrong secret", "bad_signature"),
        ("body changed", "bad_signature"),
        ("body re-encoded", "bad_signature"),
        ("id changed", "bad_signature"),
        ("timestamp changed", "bad_signature"),
        ("stale", "stale_timestamp"),
        ("future", "future_timestamp"),
        ("no signature", "missing_header"),
        ("no id", "missing_header"),
        ("timestamp not a number", "bad_header"),
        ("another version only", "bad_signature"),
    ],
)
def test_a_delivery_that_does_not_verify_is_refused_with_its_code(change: str, code: str) -> None:
    secret = new_secret()
    headers, body, now = sign(secret, "evt_1", NOW, BODY), BODY, NOW
    if change == "wrong secret":
        secret = new_secret()
    elif change == "body changed":
        body = BODY.replace(b"r1", b"r2")
    elif change == "body re-encoded":
        body = json.dumps(json.loads(BODY)).encode()  # same JSON, other bytes: not what was signed
    elif change == "id changed":
        headers["webhook-id"] = "evt_2"
    elif change == "timestamp changed":
        headers["webhook-timestamp"] = str(NOW + 1)
    elif change == "stale":
        now = NOW + 301
    elif change == "future":
        now = NOW - 301
    elif change == "no signature":
        del headers["webhook-signature"]
    elif change == "no id":
        headers["webhook-id"] = ""
    elif change == "timestamp not a number":
        headers["webhook-timestamp"] = "yesterday"
    elif change == "another version only":
        headers["webhook-signature"] = "v2," + headers["webhook-signature"][3:]
    with pytest.raises(SignatureError) as refused:
        verify(secret, headers, body, now=now)
    assert refused.value.code == code


def test_any_of_several_signatures_may_match_during_a_secret_rotation() -> None:
    old, new = new_secret(), new_secret()
    headers = sign(new, "evt_1", NOW, BODY)
    headers["webhook-signature"] = (
        f"{sign(old, 'evt_1', NOW, BODY)['webhook-signature']} {headers['webhook-signature']}"
    )
    assert verify(old, headers, BODY, now=NOW)["id"] == "evt_1"
    assert verify(new, headers, BODY, now=NOW)["id"] == "evt_1"


def test_a_bad_secret_is_a_configuration_error_saying_what_a_secret_is() -> None:
    for secret in ("whsec_", "whsec_not base64!", ""):
        with pytest.raises(ConfigurationError, match="whsec_"):
            sign(secret, "evt_1", NOW, BODY)


def test_standardwebhooks_verifies_ours_and_we_verify_theirs() -> None:
    """Interoperability with the `standardwebhooks` library (PyPI), both ways, at the real time
    (the library reads the clock itself)."""
    secret, now = new_secret(), time.time()
    ours = sign(secret, "evt_ours", now, BODY)
    assert Webhook(secret).verify(BODY, ours)["id"] == "evt_1"
    with pytest.raises(WebhookVerificationError):
        Webhook(new_secret()).verify(BODY, ours)
    theirs = {"webhook-id": "msg_theirs", "webhook-timestamp": str(int(now)),
              "webhook-signature": Webhook(secret).sign("msg_theirs", datetime.fromtimestamp(now, tz=UTC), BODY)}  # fmt: skip
    assert verify(secret, theirs, BODY)["type"] == "run.finished"


def test_the_receiver_acknowledges_a_replay_as_a_duplicate_and_refuses_it_once_stale() -> None:
    """Replay protection on the receiving side: the same id again within the window is a
    duplicate (acknowledge, do not act); replayed later, its timestamp is stale."""
    secret, clock = new_secret(), [float(NOW)]
    receiver = Receiver(secret, clock=lambda: clock[0], remember=2)
    headers = sign(secret, "evt_1", NOW, BODY)
    first, again = receiver.receive(headers, BODY), receiver.receive(headers, BODY)
    assert (first.id, first.type, first.tenant, first.data, first.duplicate) == (
        "evt_1", "run.finished", "acme", {"run_id": "r1"}, False)  # fmt: skip
    assert again.duplicate
    retried = sign(secret, "evt_1", NOW + 60, BODY)  # a retry: same id, signed anew
    assert receiver.receive(retried, BODY).duplicate
    for other in ("evt_2", "evt_3"):  # remembers the last 2 ids: evt_1 is forgotten
        assert not receiver.receive(sign(secret, other, NOW, BODY), BODY).duplicate
    clock[0] = NOW + 400
    with pytest.raises(SignatureError) as stale:
        receiver.receive(headers, BODY)
    assert stale.value.code == "stale_timestamp"
    with pytest.raises(ConfigurationError):
        Receiver("not-a-secret!")


def test_an_event_whose_action_failed_is_forgotten_and_acted_on_when_retried() -> None:
    """The receiver remembers an id when it arrives; an action that fails forgets it (the answer
    is 5xx and the deliverer tries again): the retry is acted on, not acknowledged as a duplicate
    of an event nobody acted on."""
    secret = new_secret()
    receiver = Receiver(secret, clock=lambda: float(NOW))
    headers = sign(secret, "evt_1", NOW, BODY)
    first = receiver.receive(headers, BODY)
    assert not first.duplicate and receiver.receive(headers, BODY).duplicate  # a retry while acting: once
    receiver.forget(first.id)  # acting failed: answered 5xx
    assert not receiver.receive(sign(secret, "evt_1", NOW + 2, BODY), BODY).duplicate
    assert receiver.receive(headers, BODY).duplicate
    receiver.forget("evt_never_seen")  # nothing to forget: nothing happens
