"""A tiny app for the Slack bridge's injection test (tests/integration/test_slack_bridge.py),
served with `agentflow serve --app tests.integration.slackapp:app --db ...` and bridged with
`agentflow chat-bridge slack --app tests.integration.slackapp:app ...`.

Its agent "inj" reads a site's notes (a read-only tool whose output is hostile Slack markup),
then stages a side-effecting note carrying markup of its own: the approval card must show both
as typed, notify nobody and link nowhere.
"""

from __future__ import annotations

from tests.support.injection_app import injection_app

PAYLOAD = "<!channel> *bold* <http://evil.example|click> <@U0BOSS1> &amp; ```fence``` _it_"
NOTE = "<!here> ping <#C0OTHER> *urgent* <https://evil.example|login>"

app = injection_app(PAYLOAD, NOTE)
