"""Where shared state lives: the ledger's engines (SQLite embedded, PostgreSQL for replicas) and
the Redis-backed limiters, quote cache and stores that let several replicas act as one service.

Domain packages use these through the interfaces the rest of the service already knows (the
ledger's methods, ``RateLimiter``'s ``slot``/``observe``, the leg cache, quote store and replay);
which engine is behind them is decided once, from ``RATESVC_DATABASE_URL`` and
``RATESVC_REDIS_URL``, in ``ratesvc.app``.
"""
