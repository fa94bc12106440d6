"""``POST /v1/webhooks/cin7/{account}``: Cin7 Core's deliveries, recorded and answered at once.

The credential is checked before the body is read, so a wrong one records nothing (401); an
unknown account is answered exactly like a wrong credential, so names cannot be probed. The
body must be a Cin7 Core event in JSON whatever the ``Content-Type`` says. The
event is processed in the background (:mod:`ratesvc.automation.worker`); the answer is 202 for a
new event and 200 for a repeat of one already recorded.
"""

from __future__ import annotations

import logging
import secrets

import msgspec
from aiohttp import web

from ratesvc import keys
from ratesvc.api.problems import read_body
from ratesvc.automation.credentials import credential_ok
from ratesvc.automation.events import WebhookReceipt, parse_event
from ratesvc.config import Secret, WebhookCredential
from ratesvc.errors import Unauthorized

log = logging.getLogger(__name__)
_encoder = msgspec.json.Encoder()
# Checked against when the account is unknown or has no credential: nobody knows its secret.
_NOBODY = WebhookCredential(kind="bearer", secret=Secret(secrets.token_urlsafe(32)))


async def cin7_webhook(request: web.Request) -> web.Response:
    name = request.match_info["account"]
    services = request.app[keys.ACCOUNTS].get(name)
    credential = services.account.webhook if services is not None else None
    # An unknown account, one without a webhook credential and a wrong credential get the same
    # answer (and the same hashing work), so account names cannot be probed from outside.
    if not credential_ok(credential or _NOBODY, request.headers) or services is None:
        if credential is None:
            log.warning(
                "webhook for %r refused: no such account, or it has no webhook credential "
                "(RATESVC_CIN7_WEBHOOK_TOKEN, or the account's webhook table)", name[:100]
            )  # fmt: skip
        raise Unauthorized("the webhook credential is missing or wrong")
    raw = await read_body(request)  # any Content-Type: Cin7 Core's sender is not ours to fix
    event = parse_event(raw)
    row, created = await request.app[keys.AUTOMATION].receive(services.account, event, raw)
    receipt = WebhookReceipt(event_id=row.event_id, status=row.status, duplicate=not created)
    return web.Response(
        body=_encoder.encode(receipt), status=202 if created else 200,
        content_type="application/json",
    )  # fmt: skip
