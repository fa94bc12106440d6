"""The ``ratesvc`` command: ``serve`` | ``demo`` | ``sandbox`` | ``check`` | ``cin7``."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import NoReturn

from ratesvc import __version__, event_loop, gc_tuning, supervisor
from ratesvc.app import create_app
from ratesvc.checks import check_accounts
from ratesvc.cin7_commands import subscribe_command, webhooks_command
from ratesvc.config import (
    MAX_WORKERS,
    ConfigError,
    Settings,
    load_settings,
    replicas_problem,
    with_workers,
    workers_problem,
)
from ratesvc.demo import run_demo, start_site
from ratesvc.sandbox.knobs import Knobs, Latency
from ratesvc.sandbox.shipstation import ShipStationSandbox

log = logging.getLogger("ratesvc")


def _settings_or_exit() -> Settings:
    try:
        return load_settings(os.environ)
    except ConfigError as exc:
        _refuse(exc.problems, exc)


def _refuse(problems: list[str], cause: BaseException | None = None) -> NoReturn:
    print("ratesvc: the configuration has problems:", file=sys.stderr)
    for problem in problems:
        print(f"  - {problem}", file=sys.stderr)
    raise SystemExit(2) from cause


def _workers(text: str) -> int:
    """``--workers``: 1 to 64 (like ``RATESVC_WORKERS``)."""
    try:
        count = int(text)
    except ValueError:
        count = 0
    if not 1 <= count <= MAX_WORKERS:
        raise argparse.ArgumentTypeError(f"must be a whole number from 1 to {MAX_WORKERS}")
    return count


def _stop_event() -> asyncio.Event:
    """Set by SIGTERM, SIGINT or SIGHUP — or already, when one came before the loop listened
    (:func:`ratesvc.supervisor.remember_stop_signals`)."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in supervisor.STOP_SIGNALS:
        loop.add_signal_handler(sig, stop.set)
    if supervisor.stop_signal_came():
        stop.set()
    return stop


async def _serve(settings: Settings, *, port: int | None = None, worker: str = "") -> None:
    """Serve until SIGTERM, SIGINT or SIGHUP; a ``worker`` (of several) shares ``port`` with the
    others. A stop asked for while starting (a migration may wait for another replica's, a
    database may not answer) cancels the start-up, which closes what it had opened."""
    stop = _stop_event()
    starting = asyncio.ensure_future(start_site(
        create_app(settings), settings.host, settings.port if port is None else port,
        reuse_port=bool(worker),
    ))  # fmt: skip
    stopped = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait((starting, stopped), return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopped.cancel()
        if not starting.done():
            starting.cancel()
    try:
        runner, port = await starting
    except asyncio.CancelledError:
        if not stop.is_set():
            raise
        log.info("stopped while starting%s", f" ({worker})" if worker else "")
        return
    except ConfigError as exc:
        print("ratesvc: cannot start:", *exc.problems, sep="\n  - ", file=sys.stderr)
        raise SystemExit(2) from exc
    gc_tuning.tune()  # what is alive once serving is never garbage (see the module)
    log.info("ratesvc %s serving on http://%s:%d%s", __version__, settings.host, port,
             f" ({worker})" if worker else "")  # fmt: skip
    try:
        await _stop_event().wait()
    finally:
        log.info("shutting down")
        await runner.cleanup()


def _serve_workers(settings: Settings, workers: int, loop: str) -> int:
    """``serve --workers N`` (N > 1): see :mod:`ratesvc.supervisor`."""
    reserved, port = supervisor.reserve_port(settings.host, settings.port)
    log.info("ratesvc %s starting %d workers on http://%s:%d", __version__, workers,
             settings.host, port)  # fmt: skip

    def serve(number: int) -> int:
        reserved.close()  # the parent's; this worker binds its own beside it
        try:
            event_loop.run(_serve(settings, port=port, worker=f"worker {number}/{workers}"), loop)
        except OSError as exc:
            print(f"ratesvc: worker {number}: {exc.strerror or exc}", file=sys.stderr)
            return 1
        return 0

    try:
        return supervisor.run_workers(workers, serve, stop_grace_s=settings.stop_grace_s)
    finally:
        reserved.close()


async def _sandbox(args: argparse.Namespace) -> None:
    sandbox = ShipStationSandbox(
        api_key=args.api_key,
        api_secret=args.api_secret,
        knobs=Knobs(
            latency=Latency(base_ms=args.latency_ms, jitter_ms=args.jitter_ms),
            rate_limit=args.rate_limit,
            window_s=args.window_s,
        ),
    )
    runner, port = await start_site(sandbox.app, args.host, args.port)
    print(
        f"ShipStation sandbox on http://{args.host}:{port} (key {args.api_key!r}, secret "
        f"{args.api_secret!r}); knobs at /__sandbox/knobs, counters at /__sandbox/calls",
        flush=True,
    )
    try:
        await _stop_event().wait()
    finally:
        await runner.cleanup()


async def _demo(args: argparse.Namespace) -> None:
    await run_demo(args.port, Path(args.data_dir) if args.data_dir else None, _stop_event())


async def _check(settings: Settings) -> int:
    ok, lines = await check_accounts(settings)
    for line in lines:
        print(line)
    return 0 if ok else 1


async def _cin7(settings: Settings, args: argparse.Namespace) -> int:
    if args.cin7_command == "subscribe":
        code, lines = await subscribe_command(settings, args.account, args.url)
    else:
        code, lines = await webhooks_command(settings, args.account)
    for line in lines:
        print(line, file=sys.stderr if line.startswith(("!!!", "no account")) else sys.stdout)
    return code


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="ratesvc", description=__doc__)
    parser.add_argument("--version", action="version", version=f"ratesvc {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="run the service from RATESVC_* configuration")
    serve.add_argument(
        "--workers", type=_workers, default=None, metavar="N",
        help="processes serving the port together (SO_REUSEPORT; default RATESVC_WORKERS or 1); "
        "more than 1 needs RATESVC_DATABASE_URL=postgresql://... and RATESVC_REDIS_URL",
    )  # fmt: skip
    demo = commands.add_parser("demo", help="run the service against built-in sandboxes")
    demo.add_argument("--port", type=int, default=8080, help="service port (0: any free port)")
    demo.add_argument("--data-dir", default=None, help="default: a new temporary directory")
    sandbox = commands.add_parser("sandbox", help="run the ShipStation sandbox on its own")
    sandbox.add_argument("--host", default="127.0.0.1")
    sandbox.add_argument("--port", type=int, default=8090)
    sandbox.add_argument("--api-key", default="sandbox-key")
    sandbox.add_argument("--api-secret", default="sandbox-secret")
    sandbox.add_argument("--latency-ms", type=float, default=100.0)
    sandbox.add_argument("--jitter-ms", type=float, default=20.0)
    sandbox.add_argument("--rate-limit", type=int, default=40)
    sandbox.add_argument("--window-s", type=float, default=60.0)
    commands.add_parser("check", help="verify each account's upstream credentials")
    cin7 = commands.add_parser("cin7", help="Cin7 Core webhook subscriptions")
    cin7_commands = cin7.add_subparsers(dest="cin7_command", required=True)
    subscribe = cin7_commands.add_parser(
        "subscribe", help="register (or update) the Sale/PackAuthorised webhook"
    )
    subscribe.add_argument("--account", default="default", help="account name (default: default)")
    subscribe.add_argument("--url", required=True,
                           help="public URL of POST /v1/webhooks/cin7/<account>")  # fmt: skip
    listing = cin7_commands.add_parser("webhooks", help="list webhooks and whether they are active")
    listing.add_argument("--account", default=None, help="one account (default: every account)")
    args = parser.parse_args(argv)

    workers = 1
    if args.command in ("serve", "check", "cin7"):
        settings = _settings_or_exit()
        level = settings.log_level
        if args.command == "serve":
            # checked here, not in load_settings: --workers overrides RATESVC_WORKERS, and only
            # serve forks (check and cin7 run with any RATESVC_WORKERS)
            if args.workers is None:
                workers, where = settings.workers, "RATESVC_WORKERS"
            else:
                workers, where = args.workers, f"--workers {args.workers}"
            problems = [workers_problem(settings, workers, where),
                        replicas_problem(settings, workers, where)]  # fmt: skip
            if any(problems):
                _refuse([problem for problem in problems if problem])
            settings = with_workers(settings, workers)
    else:
        settings, level = None, os.environ.get("RATESVC_LOG_LEVEL", "WARNING").upper()
    logging.basicConfig(
        level=getattr(logging, level, logging.INFO),
        format="%(asctime)s %(levelname)s "
        + ("[%(process)d] " if workers > 1 else "")
        + "%(name)s: %(message)s",
    )
    try:
        loop = event_loop.choose(os.environ)
    except ConfigError as exc:
        print(f"ratesvc: {exc}", file=sys.stderr)
        return 2
    try:
        if args.command == "serve":
            assert settings is not None
            if workers > 1:
                return _serve_workers(settings, workers, loop)
            supervisor.remember_stop_signals()  # a stop while starting is graceful too
            event_loop.run(_serve(settings), loop)
        elif args.command == "check":
            assert settings is not None
            return asyncio.run(_check(settings))
        elif args.command == "cin7":
            assert settings is not None
            return asyncio.run(_cin7(settings, args))
        elif args.command == "demo":
            event_loop.run(_demo(args), loop)
        else:
            asyncio.run(_sandbox(args))
    except OSError as exc:
        print(f"ratesvc: {exc.strerror or exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
