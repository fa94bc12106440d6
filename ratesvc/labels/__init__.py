"""Labels: the lifecycle of a purchase, from the request to the sale in Cin7 Core.

* :mod:`.lifecycle` — the states and allowed transitions, as data (start here);
* :mod:`.plan` — a request becomes exactly what will be bought (checked before recording);
* :mod:`.service` — :class:`Labels`: replay and claims, buy, read, and the entry to void;
* :mod:`.void` — voiding at ShipStation (lost answers settled from its record);
* :mod:`.retention` — forgetting what finished long ago;
* :mod:`.purchase` — the unit that buys one recorded label, package by package;
* :mod:`.reconcile` — finding a purchase whose answer was lost in ShipStation's list;
* :mod:`.writeback` — the outbox worker writing tracking and PDFs back to the sale;
* :mod:`.views` — ledger rows as the public :class:`Label`;
* :mod:`.models` — the public Structs of ``/v1/labels`` and the recorded plan.
"""

from ratesvc.labels.lifecycle import LabelStatus, PackageState
from ratesvc.labels.models import Label, LabelList, LabelPlan, LabelsRequest
from ratesvc.labels.purchase import LabelTiming
from ratesvc.labels.service import Labels
from ratesvc.labels.writeback import SALE_VOIDED, WriteBackWorker

__all__ = [
    "SALE_VOIDED",
    "Label",
    "LabelList",
    "LabelPlan",
    "LabelStatus",
    "LabelTiming",
    "Labels",
    "LabelsRequest",
    "PackageState",
    "WriteBackWorker",
]
