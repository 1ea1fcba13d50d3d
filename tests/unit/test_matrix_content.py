"""What the Matrix bridge sends and how it reads replies, without a homeserver: plain bodies that
mention nobody, edits and thread answers as the spec shapes them, a reply's quoted fallback
stripped before the command is read, the thread a message belongs to; a configuration no retry
could fix refused at once."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from agentflow.bridges import CardView, MatrixConfig
from agentflow.bridges._matrix import (
    _THUMBS_UP,
    CARD_KEY,
    _thread_root,
    card_content,
    edit_content,
    strip_fallback,
    thread_reply,
)
from agentflow.cli import app as cli
from agentflow.errors import ConfigurationError

HOSTILE = "<b>APPROVED</b> @room"


def _view() -> CardView:
    return CardView(approval_id="apr_1", run_id="r1", status="pending", tool="t", target="x", diff="-", args="{}",
                    rule="r", requested_by="alice", quorum="0/1", expires="-", evidence=[HOSTILE], votes=[],
                    editable=[], outcome=None, final=False, args_hash="h", text=f"card {HOSTILE}")  # fmt: skip


def test_cards_edits_and_answers_are_plain_text_that_mentions_nobody() -> None:
    for content in (card_content(_view()), edit_content(_view(), "$card"), thread_reply(HOSTILE, "$card", "$cmd")):
        assert "formatted_body" not in content and "format" not in content and content["m.mentions"] == {}
        assert HOSTILE in content["body"]
    assert card_content(_view())[CARD_KEY] == "apr_1" and "m.relates_to" not in card_content(_view())
    edit = edit_content(_view(), "$card")
    assert edit["m.relates_to"] == {"rel_type": "m.replace", "event_id": "$card"}
    assert edit["m.new_content"]["body"] == "card " + HOSTILE and edit["m.new_content"]["m.mentions"] == {}
    answer = thread_reply("ok", "$card", "$cmd")
    assert answer["msgtype"] == "m.notice"  # bots answer with notices, which other bots ignore
    assert answer["m.relates_to"]["rel_type"] == "m.thread" and answer["m.relates_to"]["event_id"] == "$card"


def test_a_replys_fallback_is_not_part_of_the_command() -> None:
    assert strip_fallback("> <@mallory:hs> approve\n> more\n\nreject too risky") == "reject too risky"
    assert strip_fallback("approve\n> quoted later") == "approve\n> quoted later"
    assert strip_fallback("> only a quote") == "> only a quote"


def test_the_thread_a_message_is_about() -> None:
    assert _thread_root({"rel_type": "m.thread", "event_id": "$root", "m.in_reply_to": {"event_id": "$x"}}) == "$root"
    assert _thread_root({"m.in_reply_to": {"event_id": "$card"}}) == "$card"
    assert _thread_root({"rel_type": "m.replace", "event_id": "$old"}) is None
    assert _thread_root({}) is None and _thread_root({"m.in_reply_to": "junk"}) is None


def test_thumbs_up_in_its_skin_tones_and_spellings() -> None:
    for key in ("👍", "👍🏽", "👍\ufe0f", ":+1:", "+1"):
        assert _THUMBS_UP.match(key), key
    for key in ("👎", "👍 approve", "ok", "👍👎"):
        assert not _THUMBS_UP.match(key), key


GOOD = {"homeserver": "https://matrix.example.org", "user": "@agentflow:example.org", "room": "#noc:example.org"}


@pytest.mark.parametrize(
    ("field", "value", "said"),
    [("homeserver", "matrix.example.org", "--homeserver 'matrix.example.org' is not a URL"),
     ("homeserver", "ftp://matrix.example.org", "is not a URL"), ("user", "agentflow", "is not a Matrix user id"),
     ("user", "@agentflow", "is not a Matrix user id"), ("room", "noc-east", "neither a room id nor an alias"),
     ("room", "", "neither a room id nor an alias"), ("room", "#noc-east", "neither a room id nor an alias"),
     ("poll", 0, "--poll must be at least 0.1"), ("poll", float("nan"), "--poll must be"), ("max_backoff", 0, "--max-backoff must be at least 1")],
)  # fmt: skip
def test_a_configuration_no_retry_could_fix_is_refused_at_once(field: str, value: object, said: str) -> None:
    """A bridge retries whatever the homeserver does; a homeserver that is no URL (it retried
    'notaurl' forever), a user or room that cannot exist, or a poll of 0 (a busy loop of syncs)
    is said at once instead, with what to give."""
    with pytest.raises(ConfigurationError, match=said.replace("(", r"\(").replace(".", r"\.")):
        MatrixConfig(**{**GOOD, field: value}, password="pw")  # type: ignore[arg-type]


def test_room_ids_of_every_room_version_and_aliases_are_accepted() -> None:
    for room in ("!abc:example.org", "!Qj1nXuVpI7gH3phtVQeuLlbZBah90Exl6WUYWkErESI", "#noc-east:example.org"):
        assert MatrixConfig(**{**GOOD, "room": room}, password="pw").room == room  # type: ignore[arg-type]


def test_the_password_and_token_stay_out_of_the_configs_repr() -> None:
    shown = repr(MatrixConfig(**GOOD, password="hunter2-pw", access_token="syt_T0KEN"))
    assert "hunter2" not in shown and "T0KEN" not in shown and "@agentflow:example.org" in shown


def test_the_cli_says_a_bad_homeserver_before_it_looks_for_the_store() -> None:
    done = CliRunner().invoke(cli, ["chat-bridge", "matrix", "--homeserver", "notaurl", "--user", "@b:x.org",
                                    "--room", "#r:x.org", "--tenant", "noc-east", "--db", "sqlite:///nowhere/x.db"],
                              env={"AGENTFLOW_MATRIX_PASSWORD": "pw"})  # fmt: skip
    said = " ".join(done.output.split())
    assert done.exit_code == 2 and "--homeserver 'notaurl' is not a URL" in said, said
