"""Events out as signed webhooks: approval requested, decided, expired, escalated and run
finished, POSTed to each subscription of the event's tenant, signed the Standard Webhooks way,
and delivered at least once with the event's id as the idempotency key.

    from agentflow.webhooks import Deliverer, Webhooks, verify

    sub, secret = Webhooks(store).add("https://hooks.example.org/af", tenant="noc-east")
    Deliverer(store).start()                                 # or `agentflow webhooks deliver`
    event = verify(secret, request.headers, request.body)    # on the receiving side

The events are written by the store in the transaction of what they report
(`agentflow.store._events`); this package subscribes, signs and delivers.
"""

from agentflow.webhooks._deliverer import Backoff, Deliverer
from agentflow.webhooks._signing import Received, Receiver, new_secret, sign, verify
from agentflow.webhooks._subscriptions import Subscription, Webhooks, shown_url

__all__ = [
    "Backoff",
    "Deliverer",
    "Received",
    "Receiver",
    "Subscription",
    "Webhooks",
    "new_secret",
    "shown_url",
    "sign",
    "verify",
]
