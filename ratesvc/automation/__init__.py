"""Automation: Cin7 Core webhooks and a polling safety net ship packed sales by the account's rule.

* :mod:`.events` reads a webhook delivery leniently into a :class:`~.events.Cin7Event` and names
  the statuses an event goes through;
* :mod:`.credentials` checks the credential Cin7 Core sends with a delivery (constant time);
* :mod:`.rules` picks the quote to buy by the account's :class:`~ratesvc.config.ShipRule`;
* :mod:`.worker` records events durably (deduplicated) and processes them in the background:
  re-read the sale, rate it, pick, buy through the same exactly-once path as ``POST /v1/labels``
  (key: account + sale + task) and let the write-back outbox put tracking on the sale;
* :mod:`.poller` lists ``saleList?ReadyForShipping=true`` every interval and records an event for
  each packed sale nobody has handled yet (webhooks are paid, and silently switched off after six
  failed deliveries).

An event is ``processed`` only once its label is bought; one in ``attention`` is examined again
when the sale changes (its ``Updated`` stamp, seen by the poller), when Cin7 Core delivers the
pack again, or when a person retries it.
"""
