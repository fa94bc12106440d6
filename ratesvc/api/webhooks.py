"""``POST /v1/webhooks/cin7/{account}``: Cin7 Core's deliveries, recorded and answered at once.

The credential is checked before the body is read, so a wrong one records nothing (401). The
body must be a Cin7 Core event in JSON whatever the ``Content-Type`` says. The
event is processed in the background (:mod:`ratesvc.automation.worker`); the answer is 202 for a
new event and 200 for a repeat of one already recorded.
"""

from __future__ import annotations

import msgspec
from aiohttp import web

from ratesvc import keys
from ratesvc.automation.credentials import credential_ok
from ratesvc.automation.events import WebhookReceipt, parse_event
from ratesvc.errors import NotFound, Unauthorized

_encoder = msgspec.json.Encoder()


async def cin7_webhook(request: web.Request) -> web.Response:
    name = request.match_info["account"]
    services = request.app[keys.ACCOUNTS].get(name)
    if services is None:
        raise NotFound(f"no account {name!r}; the URL is /v1/webhooks/cin7/<account name>")
    credential = services.account.webhook
    if credential is None:
        raise Unauthorized(
            f"account {name!r} has no webhook credential configured "
            "(RATESVC_CIN7_WEBHOOK_TOKEN, or the account's webhook table)"
        )
    if not credential_ok(credential, request.headers):
        raise Unauthorized(f"the webhook credential ({credential.kind}) is missing or wrong")
    raw = await request.read()  # any Content-Type: Cin7 Core's sender is not ours to fix
    event = parse_event(raw)
    row, created = await request.app[keys.AUTOMATION].receive(services.account, event, raw)
    receipt = WebhookReceipt(event_id=row.event_id, status=row.status, duplicate=not created)
    return web.Response(
        body=_encoder.encode(receipt), status=202 if created else 200,
        content_type="application/json",
    )  # fmt: skip
