"""Registering ratesvc as the target of Cin7 Core's ``Sale/PackAuthorised`` webhook.

Used by ``ratesvc cin7 subscribe`` / ``ratesvc cin7 webhooks`` and by the demo. A subscription is
*updated* (``PUT /webhooks`` with its ``ID``: new URL, credential, ``IsActive`` true) when the
organisation already has a ``Sale/PackAuthorised`` webhook pointing at this URL or at any
``/v1/webhooks/cin7/<account>`` URL of the same account — so re-running the command after a move
or after Cin7 Core deactivated the hook never leaves two subscriptions delivering twice.
"""

from __future__ import annotations

from dataclasses import dataclass

import msgspec

from ratesvc.automation.events import PACK_AUTHORISED
from ratesvc.config import WebhookCredential
from ratesvc.upstreams.cin7 import wire
from ratesvc.upstreams.cin7.client import Cin7Client


def webhook_for(
    credential: WebhookCredential, url: str, hook_id: str | None = None
) -> wire.Webhook:
    """The subscription that makes Cin7 Core send ``credential`` with each delivery."""
    secret = credential.secret.reveal()
    common = {"ID": hook_id, "Type": PACK_AUTHORISED, "IsActive": True, "ExternalURL": url}
    if credential.kind == "bearer":
        auth: dict[str, object] = {
            "ExternalAuthorizationType": "bearerauth", "ExternalBearerToken": secret,
        }  # fmt: skip
    elif credential.kind == "basic":
        auth = {"ExternalAuthorizationType": "basicauth",
                "ExternalUserName": credential.username, "ExternalPassword": secret}  # fmt: skip
    else:
        auth = {"ExternalAuthorizationType": "noauth",
                "ExternalHeaders": [{"Key": credential.header, "Value": secret}]}  # fmt: skip
    return msgspec.convert({**common, **auth}, wire.Webhook)


@dataclass(frozen=True)
class Subscribed:
    hook: wire.Webhook
    created: bool  # False: an existing subscription was updated


def _ours(hook: wire.Webhook, url: str, account: str) -> bool:
    target = hook.ExternalURL.rstrip("/")
    return hook.Type == PACK_AUTHORISED and (
        target == url.rstrip("/") or target.endswith(f"/v1/webhooks/cin7/{account}")
    )


async def subscribe(
    cin7: Cin7Client, account: str, credential: WebhookCredential, url: str, *, deadline: float
) -> Subscribed:
    existing = next((h for h in await cin7.webhooks(deadline=deadline) if _ours(h, url, account)),
                    None)  # fmt: skip
    if existing is not None and existing.ID:
        hook = webhook_for(credential, url, existing.ID)
        return Subscribed(await cin7.update_webhook(hook, deadline=deadline), created=False)
    return Subscribed(
        await cin7.subscribe(webhook_for(credential, url), deadline=deadline), created=True
    )


def describe(hook: wire.Webhook) -> str:
    state = "active" if hook.IsActive else "DEACTIVATED"
    return f"{hook.Type} → {hook.ExternalURL} ({hook.ExternalAuthorizationType}) {state}"
