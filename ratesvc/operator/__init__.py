"""What the operator console reads: the ready list of packed sales (:mod:`.ready_sales`) and the
account's status (:mod:`.status`, with the Cin7 Core webhook's state from :mod:`.webhook_state`).
"""

from ratesvc.operator.ready_sales import DETAILS, ReadySale, ReadySaleList, ReadySales
from ratesvc.operator.status import Status, account_status
from ratesvc.operator.webhook_state import WEBHOOK_STATES, WebhookState, WebhookWatch

__all__ = [
    "DETAILS",
    "WEBHOOK_STATES",
    "ReadySale",
    "ReadySaleList",
    "ReadySales",
    "Status",
    "WebhookState",
    "WebhookWatch",
    "account_status",
]
