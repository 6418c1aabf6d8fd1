"""The ``parley`` command."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import socket
import time
from typing import Any

import click

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class OperatorError(click.ClickException):
    """A mistake in how Parley was started (a bad ``--app``, say): one ``Error:`` line
    naming what to fix, exit code 2 like any usage error, no traceback."""

    exit_code = 2


def _version() -> str:
    from parley import __version__

    return __version__


class ParleyGroup(click.Group):
    """Operator mistakes and outages end a command with one ``Error:`` line, not a
    traceback: settings that do not validate (exit 2), a Redis that cannot be reached
    or refuses (exit 1)."""

    def invoke(self, ctx: click.Context) -> Any:
        import pydantic
        import redis

        from parley.cache.redis import redact

        try:
            return super().invoke(ctx)
        except pydantic.ValidationError as exc:
            raise OperatorError(settings_error(exc)) from None
        except redis.RedisError as exc:
            url = redact(_redis_url_of(exc) or "Redis")
            raise click.ClickException(f"{url}: {exc}") from None


def _redis_url_of(exc: BaseException) -> str | None:
    """Which Redis failed, as far as the environment tells (the pipeline's)."""
    from pydantic import ValidationError

    from parley.workers.settings import Settings

    try:
        return f"the pipeline Redis at {Settings().pipeline}"
    except ValidationError:
        return None


@click.group(cls=ParleyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(_version(), prog_name="parley")
def main() -> None:
    """Parley: conversational WhatsApp apps on partitioned, ordered Celery workers."""


@main.command()
@click.option(
    "--redis", "redis_url", default=None, help="Run against this Redis instead of memory."
)
def demo(redis_url: str | None) -> None:
    """Play a pizza-ordering conversation for three users and print it."""
    from parley.demo import run_demo

    raise SystemExit(asyncio.run(run_demo(redis_url)))


@main.command()
@click.option("--host", default="0.0.0.0", show_default=True)
@click.option("--port", default=8000, show_default=True, type=int)
@click.option("--workers", "processes", default=1, show_default=True, type=int)
@click.option(
    "--insecure-skip-signature",
    is_flag=True,
    help="Accept unsigned webhooks. Local development only; logged loudly.",
)
@click.option("--log-level", default="info", show_default=True)
def ingress(
    host: str, port: int, processes: int, insecure_skip_signature: bool, log_level: str
) -> None:
    """The webhook endpoint (uvicorn serving parley.asgi:from_environment)."""
    import uvicorn
    from pydantic import ValidationError

    from parley.asgi import create_ingress
    from parley.ingress.app import is_loopback
    from parley.workers.settings import Settings

    logging.basicConfig(level=log_level.upper(), format=LOG_FORMAT)
    if insecure_skip_signature and not is_loopback(host):
        raise click.UsageError(
            "--insecure-skip-signature serves only on loopback: add --host 127.0.0.1"
        )
    if insecure_skip_signature and processes != 1:
        raise click.UsageError("--insecure-skip-signature runs one process: drop --workers")
    try:  # fail before binding, not in each uvicorn worker
        app = create_ingress(Settings(), skip_signature=insecure_skip_signature)
    except ValidationError as exc:
        raise click.UsageError(settings_error(exc)) from None
    except RuntimeError as exc:
        raise click.UsageError(str(exc)) from None
    uvicorn.run(
        # unsigned: this very app object, in this process; signed: each worker process
        # builds its own from the environment, where signatures are always checked
        app if insecure_skip_signature else "parley.asgi:from_environment",
        factory=not insecure_skip_signature,
        host=host,
        port=port,
        workers=processes,
        log_level=log_level,
        access_log=False,
    )


@main.command(
    context_settings={"ignore_unknown_options": True, "allow_extra_args": True},
)
@click.option("--port", default=5555, show_default=True, type=int)
@click.option(
    "--address",
    default="127.0.0.1",
    show_default=True,
    help="Where Flower listens; anything but loopback belongs behind a TLS proxy.",
)
@click.argument("flower_options", nargs=-1, type=click.UNPROCESSED)
def flower(port: int, address: str, flower_options: tuple[str, ...]) -> None:
    """Flower on the pipeline's broker, behind basic auth from FLOWER_BASIC_AUTH
    (user:password, required; Flower reads it from the environment)."""
    import sys

    from parley.workers.settings import weak_secret

    user, _, password = os.environ.get("FLOWER_BASIC_AUTH", "").partition(":")
    if not user or not password:
        raise click.UsageError("FLOWER_BASIC_AUTH is not set: give it as user:password")
    if problem := weak_secret("the FLOWER_BASIC_AUTH password", password):
        raise click.UsageError(problem)
    command = [sys.executable, "-m", "celery", "-A", "parley.workers", "flower"]
    os.execv(sys.executable, [*command, f"--port={port}", f"--address={address}", *flower_options])


@main.command()
@click.option(
    "--app",
    "app_path",
    required=True,
    envvar="PARLEY_APP",
    show_envvar=True,
    help="The app: MODULE:ATTR (a ParleyApp), MODULE found from the current folder.",
)
@click.option(
    "--partitions",
    default="auto",
    show_default=True,
    help="auto (share the partitions with the other live nodes), all, or ranges: 0-7,12.",
)
@click.option(
    "--node", default=None, help="Node name, unique among live nodes (default parley-PID)."
)
@click.option(
    "--concurrency",
    type=click.IntRange(1, 1024),
    default=None,
    help="Handlers run at once, each for another user [default: PARLEY_CONCURRENCY, 64].",
)
@click.option("--loglevel", default="INFO", show_default=True)
def worker(
    app_path: str, partitions: str, node: str | None, concurrency: int | None, loglevel: str
) -> None:
    """A worker node: runs up to --concurrency users' handlers at once, each user's
    webhooks one at a time, in the order they were accepted."""
    from parley.wire.keys import DEFAULT_QUEUE, queue_name
    from parley.wire.partition import parse_partitions
    from parley.workers.builder import AppError, load_app
    from parley.workers.celery import WORKER_OPTIONS, create_celery
    from parley.workers.connections import wait_at_start
    from parley.workers.runtime import Runtime

    logging.basicConfig(level=loglevel.upper(), format=LOG_FORMAT)
    from parley.workers.settings import weak_secret

    try:
        app = load_app(app_path)
    except AppError as exc:
        raise OperatorError(str(exc)) from None
    if concurrency is not None:
        app.settings = app.settings.model_copy(update={"concurrency": concurrency})
    settings = app.settings
    token = settings.whatsapp_token.get_secret_value()
    if token and (problem := weak_secret("WHATSAPP_TOKEN", token, length=False)):
        raise click.UsageError(problem)
    wait_at_start(settings)  # before anything touches Redis: it may not be up yet
    name = node or f"parley-{os.getpid()}"
    runtime = Runtime(app, node=f"{name}@{socket.gethostname()}")
    celery_app = create_celery(settings, runtime.handle, on_shutdown=runtime.stop_soon)
    if partitions == "auto":
        _join_as_auto_node(runtime, celery_app)
        queues = [DEFAULT_QUEUE]  # partitions are added as leased
    else:
        spec = f"0-{settings.partitions - 1}" if partitions == "all" else partitions
        try:
            owned = parse_partitions(spec, settings.partitions)
        except ValueError as exc:
            raise click.BadParameter(str(exc), param_hint="--partitions") from None
        recovered = runtime.run(runtime.recover(owned))  # before consuming anything newer
        if recovered:
            logging.getLogger("parley.worker").warning(
                "finished %d in-flight envelope(s)", recovered
            )
        queues = [queue_name(p) for p in owned]
        _drain_on_shutdown(settings, celery_app)
    try:
        celery_app.worker_main(
            [
                "worker",
                *WORKER_OPTIONS,
                *("--queues", ",".join(queues)),
                *("--hostname", f"{name}@%h", "--loglevel", loglevel),
            ]
        )
    finally:
        runtime.close()


def _redis_broker(settings: Any) -> Any:
    """A client of the broker when it is Redis (to put messages back in front)."""
    import redis

    from parley.workers.connections import is_redis

    return redis.Redis.from_url(settings.broker) if is_redis(settings.broker) else None


def _drain_on_shutdown(settings: Any, celery_app: Any) -> None:
    from parley.workers.lanes import install_drain

    install_drain(celery_app, _redis_broker(settings))


def _join_as_auto_node(runtime: Any, celery_app: Any) -> None:
    """Wire partition ownership into the worker about to start."""
    import redis

    from parley.workers.leases import Leases
    from parley.workers.ownership import Coordinator, NodeNameTaken, install
    from parley.workers.reconciler import NoQueues, Periodic, Reconciler

    settings = runtime.settings
    timeout = settings.lease_ttl / 6  # a renewal must fail fast, well inside the lease
    leases = Leases(
        redis.Redis.from_url(
            settings.pipeline, socket_timeout=timeout, socket_connect_timeout=timeout
        ),
        runtime.node,
        settings.lease_ttl,
    )
    coordinator = Coordinator(
        leases,
        _redis_broker(settings),
        redis.Redis.from_url(settings.pipeline),
        settings.partitions,
        settings.lease_ttl,
    )
    coordinator.on_take = lambda partition: runtime.run(runtime.recover([partition]))
    runtime.fenced = True  # begin.lua runs an envelope only while the lease is ours
    runtime.on_lease_lost = coordinator.lease_lost
    runtime.holds = coordinator.holds  # every cache call and send checks the lease first
    runtime.on_abandoned = coordinator.give_up
    try:  # beside ownership; it stops as soon as the node drains (SIGTERM)
        reconciler = Reconciler.for_settings(settings, runtime.node, stopping=coordinator.draining)
    except NoQueues as exc:
        logging.getLogger("parley.reconciler").warning("reconciler off: %s", exc)
    else:
        coordinator.companions.append(Periodic(reconciler))
    try:
        coordinator.claim_name()
    except NodeNameTaken as exc:
        raise click.UsageError(f"{exc}; give another --node") from None
    install(celery_app, coordinator)


def settings_error(exc: Any) -> str:
    """A pydantic ValidationError of the settings in one line, naming each field and
    never its value (it may be a secret)."""
    problems = "; ".join(
        f"{'.'.join(map(str, error['loc'])) or 'settings'}: {error['msg']}"
        for error in exc.errors(include_input=False, include_url=False)
    )
    return f"invalid settings: {problems}"


def _console() -> Any:
    """Rich output; wide when piped, so tables are not cut to 80 columns. No markup or
    emoji codes: the cells hold ids from payloads, which must print as they are."""
    import sys

    from rich.console import Console

    width = None if sys.stdout.isatty() else 200
    return Console(width=width, markup=False, emoji=False, highlight=False)


def _pipeline_client() -> tuple[Any, Any]:
    """The settings from the environment, and a client of their pipeline DB."""
    import redis

    from parley.workers.settings import Settings

    settings = Settings()
    return redis.Redis.from_url(settings.pipeline), settings


@main.command()
@click.option("--since", default=None, help="ISO time, a duration back (2h, 7d) or a stream id.")
@click.option("--until", default=None, help="Same forms as --since.")
@click.option("--tenant", default=None, help="Only this tenant (phone number id).")
@click.option("--user", default=None, help="Only this user id.")
@click.option("--type", "kind", type=click.Choice(["message", "status", "error"]), default=None)
@click.option("--dead", is_flag=True, help="Replay dead letters instead of the log.")
@click.option("--dry-run", is_flag=True, help="Show what would be replayed; send nothing.")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@click.option("--rate", type=float, default=None, help="At most N envelopes per second.")
@click.option(
    "--unfinished",
    is_flag=True,
    help="Run the reconciler once: re-enqueue logged webhooks that are in no queue, not "
    "in flight and not done (from its cursor, or --since; with --dry-run).",
)
def replay(
    since: str | None,
    until: str | None,
    tenant: str | None,
    user: str | None,
    kind: str | None,
    dead: bool,
    dry_run: bool,
    yes: bool,
    rate: float | None,
    unfinished: bool,
) -> None:
    """Re-enqueue accepted webhooks (or dead letters), in their original order."""
    if unfinished:
        if until or tenant or user or kind or dead or rate:
            raise click.UsageError("--unfinished takes only --since and --dry-run")
        _replay_unfinished(since, dry_run)
        return
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
    )
    from rich.table import Table

    from parley.replay import enqueue, select, stream_bound, summary
    from parley.wire.keys import DEAD_LETTERS, REPLAY_LOG

    console = _console()
    client, settings = _pipeline_client()
    try:
        bounds = stream_bound(since), stream_bound(until, end=True)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None
    stream = DEAD_LETTERS if dead else REPLAY_LOG
    entries = list(select(client, stream, *bounds, tenant=tenant, user=user, kind=kind))
    what = "dead letters" if dead else "logged webhooks"
    console.print(f"{len(entries)} {what} match ({bounds[0]} .. {bounds[1]})")
    if dry_run:
        for name, counts in summary(entries, settings).items():
            table = Table(name, "envelopes", title=f"by {name}")
            for key, count in sorted(counts.items()):
                table.add_row(key, str(count))
            console.print(table)
        return
    if not entries:
        return
    if not yes and not click.confirm(f"Replay {len(entries)} {what}?", default=False):
        raise SystemExit(1)
    columns = (
        TextColumn("replaying"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[rate]}"),
        TimeRemainingColumn(),
    )
    started = time.monotonic()
    with Progress(*columns, console=console) as progress:
        task = progress.add_task("replay", total=len(entries), rate="")

        def advance(n: int) -> None:
            done = progress.tasks[0].completed + n
            per_second = done / max(time.monotonic() - started, 1e-6)
            progress.update(task, advance=n, rate=f"{per_second:,.0f}/s")

        batch = enqueue(client, entries, settings, dead=dead, rate=rate, advance=advance)
    elapsed = time.monotonic() - started
    console.print(
        f"replayed {len(entries)} {what} as {batch} in {elapsed:.2f}s "
        f"({len(entries) / max(elapsed, 1e-6):,.0f} envelopes/s)"
    )


def _replay_unfinished(since: str | None, dry_run: bool) -> None:
    """``parley replay --unfinished``: one reconcile, reported for people."""
    import redis

    from parley.replay import stream_bound
    from parley.wire.messages import task_repr

    console = _console()
    try:
        start = stream_bound(since) if since is not None else None
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--since") from None
    try:
        report = _reconcile(start, dry_run)
    except redis.RedisError as exc:
        raise click.ClickException(f"cannot reach Redis: {exc}") from None
    console.print(
        f"checked {report.checked} logged webhooks from {report.since} up to {report.until} "
        f"(older than the grace period): {report.settled} done or dead-lettered, "
        f"{report.pending} queued or in flight, {len(report.lost)} lost"
    )
    if report.behind:
        console.print(
            f"entries before {report.since} can no longer be checked: their done-markers "
            "may have expired (PARLEY_DONE_TTL)"
        )
    if report.lost:
        console.print(("would re-enqueue" if dry_run else "re-enqueued") + ":")
        for entry in report.lost:
            console.print(f"  {entry.entry_id}  {task_repr(entry.envelope)}")
    if report.full:
        console.print(
            f"stopped at the batch limit (PARLEY_RECONCILE_BATCH); "
            f"the rest starts after {report.last}"
        )
    if start is not None:
        console.print(f"cursor: {report.cursor or 'none'} (unchanged: --since)")
    elif report.settled_to is None:
        console.print(f"cursor: {report.cursor or 'none'} (unchanged)")
    elif dry_run:
        console.print(
            f"cursor: {report.cursor or 'none'} (unchanged; a run would move it to "
            f"{report.settled_to})"
        )
    else:
        console.print(f"cursor: {report.settled_to} (moved)")


def _reconcile(since: str | None, dry_run: bool) -> Any:
    """One reconcile from the command line (a dry one for ``parley status``); its
    findings are printed by the caller, not logged."""
    from parley.workers.reconciler import Busy, NoQueues, Reconciler
    from parley.workers.settings import Settings

    logging.getLogger("parley.reconciler").addHandler(logging.NullHandler())
    holder = f"cli-{os.getpid()}@{socket.gethostname()}"
    try:
        return Reconciler.for_settings(Settings(), holder).run(since, dry_run=dry_run)
    except (Busy, NoQueues) as exc:
        raise click.ClickException(str(exc)) from None


@main.group()
def dead() -> None:
    """Inspect and drop dead letters."""


@dead.command("list")
def dead_list() -> None:
    """When, tenant, masked user, message id, reason and error of each dead letter."""
    from rich.table import Table

    from parley.replay import select
    from parley.wire.envelope import mask_user_id
    from parley.wire.keys import DEAD_LETTERS

    client, _ = _pipeline_client()
    table = Table("id", "last failure", "tenant", "user", "event", "reason", "attempts", "error")
    for entry in select(client, DEAD_LETTERS):
        f = entry.fields
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(float(f["last_failure"])))
        table.add_row(
            entry.entry_id,
            when,
            f["tenant_id"],
            mask_user_id(f["user_id"]),
            f["event_id"],
            f.get("reason", "error"),
            f["attempts"],
            f"{f['error_type'].rsplit('.', 1)[-1]}: {f['error'][:60]}",
        )
    _console().print(table)


@dead.command("show")
@click.argument("entry_id")
def dead_show(entry_id: str) -> None:
    """One dead letter: its envelope and traceback."""
    from parley.replay import STREAM_ID
    from parley.wire.keys import DEAD_LETTERS

    if not STREAM_ID.match(entry_id):
        raise OperatorError(f"no dead letter {entry_id}: ids look like 1767225600000-0")
    client, _ = _pipeline_client()
    found = client.xrange(DEAD_LETTERS, entry_id, entry_id)
    if not found:
        raise click.ClickException(f"no dead letter {entry_id}")
    fields = {k.decode(): v.decode() for k, v in found[0][1].items()}
    traceback = fields.pop("traceback")
    envelope = json.loads(fields.pop("envelope"))
    for key, value in fields.items():
        click.echo(f"{key}: {value}")
    click.echo("envelope:\n" + json.dumps(envelope, indent=2, ensure_ascii=False))
    click.echo(traceback)


@dead.command("drop")
@click.argument("entry_id", required=False)
@click.option("--all", "drop_all", is_flag=True, help="Drop every dead letter.")
def dead_drop(entry_id: str | None, drop_all: bool) -> None:
    """Delete one dead letter, or all of them."""
    from parley.wire.keys import DEAD_LETTERS

    client, _ = _pipeline_client()
    if drop_all:
        count = client.xlen(DEAD_LETTERS)
        client.delete(DEAD_LETTERS)
    elif entry_id:
        count = client.xdel(DEAD_LETTERS, entry_id)
        if not count:
            raise click.ClickException(f"no dead letter {entry_id}")
    else:
        raise click.UsageError("give a dead letter id or --all")
    click.echo(f"dropped {count} dead letter(s)")


@main.command()
def status() -> None:
    """Per partition its owner, queue depth, lag (age of the oldest waiting webhook) and
    the envelopes in flight on each node; the live nodes and what each runs."""
    from collections import Counter

    from rich.table import Table

    from parley.status import read_state
    from parley.wire.keys import queue_name

    client, settings = _pipeline_client()
    state = read_state(client, settings.partitions)
    table = Table("partition", "queue", "depth", "lag", "owner (lease)", "in flight")
    for row in state.partitions:
        table.add_row(
            str(row.partition),
            queue_name(row.partition),
            str(row.depth),
            f"{row.lag:.1f}s" if row.lag is not None else "",
            row.owner or "-",
            " ".join(f"{count} on {node}" for node, count in sorted(row.in_flight.items())),
        )
    console = _console()
    console.print(table)
    owned = Counter(row.owner for row in state.partitions)
    running: Counter[str] = Counter()
    for row in state.partitions:
        running.update(row.in_flight)
    nodes = Table("live node", "partitions", "in flight", "heartbeat expires in")
    for name, left in sorted(state.nodes.items()):
        nodes.add_row(name, str(owned[name]), str(running[name]), f"{left:.1f}s")
    console.print(nodes)
    console.print(
        f"replay log: {state.replay_log} envelopes   dead letters: {state.dead_letters}   "
        f"recovered by the reconciler: {state.recovered}"
    )
    try:
        report = _reconcile(None, dry_run=True)
    except click.ClickException as exc:
        console.print(f"unaccounted for: unknown ({exc.message})")
    else:
        more = " and more not checked" if report.full else ""
        console.print(
            f"unaccounted for: {len(report.lost)} of the {report.checked} logged webhooks "
            f"past the grace period after the reconciler's cursor{more}"
        )
