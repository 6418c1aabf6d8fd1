"""The ``parley`` command."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import socket
import time
from collections.abc import Callable
from typing import Any, TypeVar

import click

F = TypeVar("F", bound=Callable[..., Any])

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
#: What ``--log-level`` takes: the levels logging, uvicorn and Celery all know
LOG_LEVELS = ("debug", "info", "warning", "error", "critical")


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

        _load_env_file()
        try:
            return super().invoke(ctx)
        except pydantic.ValidationError as exc:
            raise OperatorError(settings_error(exc)) from None
        except redis.RedisError as exc:
            url = redact(_redis_url_of(ctx) or "Redis")
            raise click.ClickException(f"{url}: {exc}") from None


def _load_env_file() -> None:
    """The current folder's ``.env`` under the environment, which wins: what the
    settings read (``env_file``) also reaches the options behind variables
    (``PARLEY_APP``) and the processes a command starts."""
    from dotenv import load_dotenv

    from parley.cache.settings import ENV_FILE

    load_dotenv(os.path.join(os.getcwd(), ENV_FILE), override=False)


#: ``ctx.meta`` key of the settings a command runs with (``--redis-url`` applied)
SETTINGS = "parley.settings"


def _redis_url_of(ctx: click.Context) -> str | None:
    """Which Redis failed: the pipeline's, of the command's settings or else the
    environment's."""
    from pydantic import ValidationError

    from parley.workers.settings import Settings

    try:
        settings = ctx.meta.get(SETTINGS) or Settings()
    except ValidationError:
        return None
    return f"the pipeline Redis at {settings.pipeline}"


class AliasedOption(click.Option):
    """An option with a second spelling that is accepted but not listed in ``--help``
    (its help text names it): ``--log-level`` and ``--loglevel`` on both commands, as
    uvicorn and Celery spell it."""

    def get_help_record(self, ctx: click.Context) -> tuple[str, str] | None:
        opts = self.opts
        self.opts = opts[:1]
        try:
            return super().get_help_record(ctx)
        finally:
            self.opts = opts


def log_level_option() -> Callable[[F], F]:
    return click.option(
        "--log-level",
        "--loglevel",
        "log_level",
        cls=AliasedOption,
        type=click.Choice(LOG_LEVELS, case_sensitive=False),
        default="info",
        show_default=True,
        help="Also spelled --loglevel.",
    )


def redis_url_option() -> Callable[[F], F]:
    return click.option(
        "--redis-url",
        envvar="PARLEY_REDIS_URL",
        show_envvar=True,
        default=None,
        metavar="URL",
        help="The base Redis server, as the setting: the pipeline is its DB 3 "
        "(unless PARLEY_PIPELINE_URL names another).",
    )


@click.group(cls=ParleyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(_version(), prog_name="parley")
def main() -> None:
    """Parley: conversational WhatsApp apps on partitioned, ordered Celery workers."""


@main.command()
@click.option(
    "--redis",
    "redis_url",
    default=None,
    metavar="URL",
    help="Run against this Redis instead of memory; refused while worker nodes run on it.",
)
@click.pass_context
def demo(ctx: click.Context, redis_url: str | None) -> None:
    """Play a pizza-ordering conversation for three users and print it."""
    from parley.demo import NoReply, busy_with_nodes, run_demo
    from parley.workers.settings import Settings

    if redis_url:
        settings = ctx.meta[SETTINGS] = Settings(redis_url=redis_url)
        if problem := busy_with_nodes(settings):
            raise click.ClickException(problem)
    try:
        raise SystemExit(asyncio.run(run_demo(redis_url)))
    except NoReply as exc:
        raise click.ClickException(str(exc)) from None


@main.command()
@click.option("--host", default="0.0.0.0", show_default=True)
@click.option("--port", default=8000, show_default=True, type=int)
@click.option("--workers", "processes", default=1, show_default=True, type=int)
@click.option(
    "--insecure-skip-signature",
    is_flag=True,
    help="Accept unsigned webhooks. Local development only; logged loudly.",
)
@log_level_option()
def ingress(
    host: str, port: int, processes: int, insecure_skip_signature: bool, log_level: str
) -> None:
    """The webhook endpoint (uvicorn serving parley.asgi:from_environment)."""
    import redis
    import uvicorn
    from pydantic import ValidationError

    from parley.asgi import create_ingress, prepare_processes, uvicorn_log_config
    from parley.cache.redis import redact
    from parley.ingress.app import is_loopback
    from parley.workers.deployment import DeploymentMismatch, check_deployment
    from parley.workers.settings import Settings

    logging.basicConfig(level=log_level.upper(), format=LOG_FORMAT)
    if insecure_skip_signature and not is_loopback(host):
        raise click.UsageError(
            "--insecure-skip-signature serves only on loopback: add --host 127.0.0.1"
        )
    if insecure_skip_signature and processes != 1:
        raise click.UsageError("--insecure-skip-signature runs one process: drop --workers")
    try:  # fail before binding, not in each uvicorn worker
        settings = Settings()
        app = create_ingress(settings, skip_signature=insecure_skip_signature, warn=True)
    except ValidationError as exc:
        raise click.UsageError(settings_error(exc)) from None
    except RuntimeError as exc:
        raise click.UsageError(str(exc)) from None
    try:
        check_deployment(settings, "ingress")
    except DeploymentMismatch as exc:
        raise OperatorError(str(exc)) from None
    except redis.RedisError as exc:  # it serves anyway: 503 until the pipeline answers
        logging.getLogger("parley.ingress").warning(
            "cannot check the deployment in the pipeline Redis (%s): %s",
            redact(settings.pipeline),
            exc,
        )
    try:  # several processes: /metrics sums their counters (PROMETHEUS_MULTIPROC_DIR)
        clean_up = prepare_processes(processes)
    except RuntimeError as exc:
        raise click.UsageError(str(exc)) from None
    try:
        uvicorn.run(
            # unsigned: this very app object, in this process; signed: each worker process
            # builds its own from the environment, where signatures are always checked
            app if insecure_skip_signature else "parley.asgi:from_environment",
            factory=not insecure_skip_signature,
            host=host,
            port=port,
            workers=processes,
            log_level=log_level,
            log_config=uvicorn_log_config(log_level, LOG_FORMAT),
            access_log=False,
        )
    finally:
        clean_up()


@main.command("send-webhook")
@click.argument("text")
@click.option("--from", "user", required=True, help="The sender's WhatsApp id (digits).")
@click.option(
    "--url",
    default="http://127.0.0.1:8000/webhook",
    show_default=True,
    help="The ingress's webhook endpoint.",
)
@click.option(
    "--phone-id",
    envvar="WHATSAPP_PHONE_ID",
    show_envvar=True,
    default=None,
    help="The business number it is sent to (the tenant) [default: a test number].",
)
def send_webhook(text: str, user: str, url: str, phone_id: str | None) -> None:
    """POST one text message to an ingress, signed with WHATSAPP_APP_SECRET as Meta
    signs its deliveries: to try an app without Meta."""
    import httpx
    import orjson

    from parley.testing.deliveries import PHONE_ID, delivery, sign, text_message
    from parley.workers.settings import Settings

    secret = Settings().whatsapp_app_secret.get_secret_value()
    if not secret:
        raise OperatorError("WHATSAPP_APP_SECRET is not set: give it the ingress's app secret")
    body = orjson.dumps(delivery([text_message(user, text)], phone_id or PHONE_ID))
    try:
        answer = httpx.post(url, content=body, headers=sign(body, secret), timeout=10)
    except httpx.HTTPError as exc:
        raise click.ClickException(
            f"no ingress answers at {url} ({exc}): start one (parley ingress --port 8000)"
        ) from None
    if answer.status_code != 200:
        raise click.ClickException(f"the ingress answered {answer.status_code}: {answer.text}")
    click.echo(f"the ingress accepted it: {answer.text}")


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
    envvar="PARLEY_CONCURRENCY",
    show_envvar=True,
    help="Handlers run at once, each for another user (default 64).",
)
@log_level_option()
def worker(
    app_path: str, partitions: str, node: str | None, concurrency: int | None, log_level: str
) -> None:
    """A worker node: runs up to --concurrency users' handlers at once, each user's
    webhooks one at a time, in the order they were accepted."""
    from parley.wire.keys import DEFAULT_QUEUE, queue_name
    from parley.wire.partition import parse_partitions
    from parley.workers.builder import AppError, load_app
    from parley.workers.celery import WORKER_OPTIONS, create_celery, publish
    from parley.workers.connections import wait_at_start
    from parley.workers.deployment import DeploymentMismatch, check_deployment
    from parley.workers.runtime import Runtime

    logging.basicConfig(level=log_level.upper(), format=LOG_FORMAT)
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
    try:
        check_deployment(settings, "worker")
    except DeploymentMismatch as exc:
        raise OperatorError(str(exc)) from None
    name = node or f"parley-{os.getpid()}"
    runtime = Runtime(app, node=f"{name}@{socket.gethostname()}")
    celery_app = create_celery(settings, runtime.handle, on_shutdown=runtime.stop_soon)
    runtime.start_timers(lambda envelope: publish(celery_app, envelope, settings.partitions))
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
    if logging.getLevelName(log_level.upper()) != logging.DEBUG:  # one line per queue
        logging.getLogger("celery.worker.consumer.consumer").setLevel(logging.WARNING)
    logging.getLogger("parley.worker").info(
        "parley %s: node %s, app %s, partitions %s of %d, up to %d handlers at once",
        _version(),
        runtime.node,
        app_path,
        "auto (those it holds the leases of)" if partitions == "auto" else spec,
        settings.partitions,
        settings.concurrency,
    )
    try:
        celery_app.worker_main(
            [
                "worker",
                *WORKER_OPTIONS,
                *("--queues", ",".join(queues)),
                *("--hostname", f"{name}@%h", "--loglevel", log_level.upper()),
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


def _pipeline_client(redis_url: str | None) -> tuple[Any, Any]:
    """The settings (from the environment, ``--redis-url`` over it), and a client of
    their pipeline DB. The settings are kept in the context, so a Redis that fails is
    named as the command saw it."""
    import redis

    from parley.workers.settings import Settings

    settings = Settings(redis_url=redis_url) if redis_url else Settings()
    click.get_current_context().meta[SETTINGS] = settings
    return redis.Redis.from_url(settings.pipeline), settings


def _count(n: int, noun: str, plural: str | None = None) -> str:
    """``1 dead letter``, ``2 dead letters``."""
    return f"{n} {noun if n == 1 else plural or noun + 's'}"


def _confirm(question: str, refused: str) -> None:
    """Ask before a change that cannot be undone; refuse (exit 1) unless the answer is
    yes. Only a terminal is asked: piped input may be another command's output (a line
    of commands pasted as a pipeline), and with no input there is no one to answer."""
    import sys

    if not sys.stdin.isatty():
        raise click.ClickException(f"{refused}: no terminal to confirm on; add --yes")
    try:
        answer = click.confirm(question, default=False)
    except click.Abort:  # Ctrl-C or Ctrl-D at the question
        answer = False
        click.echo()
    if not answer:
        raise click.ClickException(f"{refused}: not confirmed")


def _natural(item: tuple[str, int]) -> tuple[bool, int, str]:
    """Counts by partition in number order (9 before 11), others by name."""
    key = item[0]
    return (not key.isdigit(), int(key) if key.isdigit() else 0, key)


def _when(entry_id: str) -> str:
    """A stream id (or bound) as the time it stands for, in UTC."""
    from parley.replay import STREAM_ID, stream_time, utc

    if not STREAM_ID.match(entry_id):
        return entry_id
    return utc(stream_time(entry_id))


def _selection(
    bounds: tuple[str, str], tenant: str | None, user: str | None, kind: str | None
) -> str:
    """What ``parley replay`` was asked for, in words (for the line saying it found
    nothing)."""
    parts = []
    if bounds[0] != "-":
        parts.append(f"since {_when(bounds[0])}")
    if bounds[1] != "+":
        parts.append(f"until {_when(bounds[1])}")
    parts += [
        f"{name} {value}"
        for name, value in (("tenant", tenant), ("user", user), ("type", kind))
        if value
    ]
    return ", ".join(parts)


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
@redis_url_option()
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
    redis_url: str | None,
) -> None:
    """Re-enqueue accepted webhooks (or dead letters), in their original order."""
    if unfinished:
        if until or tenant or user or kind or dead or rate:
            raise click.UsageError("--unfinished takes only --since and --dry-run")
        _replay_unfinished(since, dry_run, redis_url)
        return
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
    )
    from rich.table import Table

    from parley.replay import ReplayInterrupted, enqueue, select, stream_bound, summary
    from parley.wire.keys import DEAD_LETTERS, REPLAY_LOG

    console = _console()
    try:
        bounds = stream_bound(since), stream_bound(until, end=True)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None
    client, settings = _pipeline_client(redis_url)
    stream = DEAD_LETTERS if dead else REPLAY_LOG
    entries = list(select(client, stream, *bounds, tenant=tenant, user=user, kind=kind))
    noun = ("dead letter", "dead letters") if dead else ("logged webhook", "logged webhooks")
    if not entries:
        asked = _selection(bounds, tenant, user, kind)
        if asked:
            console.print(f"no {noun[1]} match ({asked})")
        else:
            console.print("there are no dead letters" if dead else "the replay log is empty")
        return
    first, last = _when(entries[0].entry_id), _when(entries[-1].entry_id)
    span = f"at {first}" if first == last else f"from {first} to {last}"
    console.print(
        f"{_count(len(entries), *noun)} {'matches' if len(entries) == 1 else 'match'}, "
        f"{'dead-lettered' if dead else 'accepted'} {span}"
    )
    if dry_run:
        for name, counts in summary(entries, settings).items():
            table = Table(name, "envelopes", title=f"by {name}")
            for key, count in sorted(counts.items(), key=_natural):
                table.add_row(key, str(count))
            console.print(table)
        return
    if not yes:
        _confirm(f"Replay {_count(len(entries), *noun)}?", f"nothing replayed ({_count(0, *noun)})")
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

        try:
            batch = enqueue(client, entries, settings, dead=dead, rate=rate, advance=advance)
        except ReplayInterrupted as exc:
            raise click.ClickException(str(exc)) from None
    elapsed = time.monotonic() - started
    console.print(
        f"replayed {_count(len(entries), *noun)} as {batch} in {elapsed:.2f}s "
        f"({len(entries) / max(elapsed, 1e-6):,.0f} envelopes/s)"
    )


def _replay_unfinished(since: str | None, dry_run: bool, redis_url: str | None) -> None:
    """``parley replay --unfinished``: one reconcile, reported for people. The cursor is
    shown as its stream id: it is what ``--since`` would take to start from it."""
    import redis

    from parley.replay import stream_bound
    from parley.wire.messages import task_repr

    console = _console()
    try:
        start = stream_bound(since) if since is not None else None
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--since") from None
    _, settings = _pipeline_client(redis_url)
    try:
        report = _reconcile(settings, start, dry_run)
    except redis.RedisError as exc:
        raise click.ClickException(f"cannot reach Redis: {exc}") from None
    console.print(
        f"checked {_count(report.checked, 'logged webhook')} accepted from "
        f"{_when(report.since)} up to {_when(report.until)} "
        f"(older than the grace period): {report.settled} done or dead-lettered, "
        f"{report.pending} queued or in flight, {len(report.lost)} lost"
    )
    if report.behind:
        console.print(
            f"webhooks accepted before {_when(report.since)} can no longer be checked: "
            "their done-markers may have expired (PARLEY_DONE_TTL)"
        )
    if report.lost:
        console.print(("would re-enqueue" if dry_run else "re-enqueued") + ":")
        for entry in report.lost:
            when = _when(entry.entry_id)
            console.print(f"  {when}  {entry.entry_id}  {task_repr(entry.envelope)}")
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


def _reconcile(settings: Any, since: str | None, dry_run: bool) -> Any:
    """One reconcile from the command line (a dry one for ``parley status``); its
    findings are printed by the caller, not logged."""
    from parley.workers.reconciler import Busy, NoQueues, Reconciler

    logging.getLogger("parley.reconciler").addHandler(logging.NullHandler())
    holder = f"cli-{os.getpid()}@{socket.gethostname()}"
    try:
        return Reconciler.for_settings(settings, holder).run(since, dry_run=dry_run)
    except (Busy, NoQueues) as exc:
        raise click.ClickException(str(exc)) from None


@main.group()
def dead() -> None:
    """Inspect and drop dead letters. A dead letter's id (parley dead list) stays the
    same when a replay of it fails again; its event id is accepted too."""


def _one_dead_letter(client: Any, ref: str) -> list[Any]:
    """The entries of the one dead letter ``ref`` names (several only when a replay
    raced another), or a one-line error."""
    from parley.replay import dead_letter_id, find_dead_letters

    if not ref.isprintable() or any(ch.isspace() for ch in ref):
        raise OperatorError(f"no dead letter {ref!r}: give an id from `parley dead list`")
    entries = find_dead_letters(client, ref)
    if not entries:
        raise click.ClickException(f"no dead letter {ref} (ids are in `parley dead list`)")
    ids = sorted({dead_letter_id(entry) for entry in entries})
    if len(ids) > 1:
        raise click.ClickException(
            f"{len(ids)} dead letters have event id {ref}: give one of their ids: " + ", ".join(ids)
        )
    return entries


@dead.command("list")
@redis_url_option()
def dead_list(redis_url: str | None) -> None:
    """Id, time of the last failure (UTC), tenant, masked user, event id, reason, attempts
    and error of each dead letter, oldest first."""
    from rich.table import Table

    from parley.replay import dead_letter_id, select, utc
    from parley.wire.envelope import mask_user_id
    from parley.wire.keys import DEAD_LETTERS

    client, _ = _pipeline_client(redis_url)
    table = Table("id", "last failure", "tenant", "user", "event", "reason", "attempts", "error")
    for entry in select(client, DEAD_LETTERS):
        f = entry.fields
        table.add_row(
            dead_letter_id(entry),
            utc(float(f["last_failure"])),
            f["tenant_id"],
            mask_user_id(f["user_id"]),
            f["event_id"],
            f.get("reason", "error"),
            f["attempts"],
            f"{f['error_type'].rsplit('.', 1)[-1]}: {f['error'][:60]}",
        )
    if not table.rows:
        click.echo("there are no dead letters")
        return
    _console().print(table)


@dead.command("show")
@click.argument("dead_id", metavar="ID")
@click.option(
    "--payload", is_flag=True, help="Print the webhook's payload too (message text included)."
)
@redis_url_option()
def dead_show(dead_id: str, payload: bool, redis_url: str | None) -> None:
    """One dead letter: what failed, when (UTC), and its traceback. ID: from parley dead
    list (or the event id). The payload, which holds the message text, only with
    --payload."""
    from parley.replay import dead_letter_id, utc

    client, _ = _pipeline_client(redis_url)
    entry = _one_dead_letter(client, dead_id)[-1]  # the newest, if a replay raced another
    fields = dict(entry.fields)
    traceback = fields.pop("traceback", "")
    fields.pop("envelope", None)
    fields.pop("id", None)
    click.echo(f"id: {dead_letter_id(entry)}")
    for key, value in fields.items():
        if key in ("first_failure", "last_failure"):
            value = utc(float(value))
        click.echo(f"{key}: {value}")
    envelope = entry.envelope
    click.echo(f"received_at: {utc(envelope.received_at)}")
    if payload:
        text = json.dumps(envelope.payload, indent=2, ensure_ascii=False)
        click.echo("payload:\n" + text)
    else:
        click.echo("payload: not shown (--payload shows it, message text included)")
    click.echo(traceback.rstrip("\n"))


@dead.command("drop")
@click.argument("dead_id", metavar="[ID]", required=False)
@click.option("--all", "drop_all", is_flag=True, help="Drop every dead letter (asks first).")
@click.option("--yes", is_flag=True, help="With --all: do not ask for confirmation.")
@redis_url_option()
def dead_drop(dead_id: str | None, drop_all: bool, yes: bool, redis_url: str | None) -> None:
    """Delete one dead letter (ID: from parley dead list), or all of them."""
    from parley.wire.keys import DEAD_LETTERS

    if drop_all == bool(dead_id):
        raise click.UsageError("give a dead letter id or --all (not both)")
    client, _ = _pipeline_client(redis_url)
    if dead_id:
        entries = _one_dead_letter(client, dead_id)
        client.xdel(DEAD_LETTERS, *[entry.entry_id for entry in entries])
        click.echo(f"dropped dead letter {dead_id}")
        return
    newest = client.xrevrange(DEAD_LETTERS, count=1)
    if not newest:
        click.echo("there are no dead letters")
        return
    present = _count(client.xlen(DEAD_LETTERS), "dead letter")
    if not yes:
        _confirm(f"Drop all {present}? They cannot be replayed after.", "nothing dropped")
    # exactly those asked about: a dead letter added since the question stays
    ms, _, seq = newest[0][0].decode().partition("-")
    dropped = client.xtrim(DEAD_LETTERS, minid=f"{ms}-{int(seq) + 1}", approximate=False)
    click.echo(f"dropped {_count(dropped, 'dead letter')}")


@main.command()
@redis_url_option()
def status(redis_url: str | None) -> None:
    """Per partition its owner, queue depth (from the broker), lag (age of the oldest
    waiting webhook; not on RabbitMQ) and the envelopes in flight on each node; the live
    nodes and what each runs."""
    from collections import Counter

    from rich.table import Table

    from parley.depths import open_depths
    from parley.status import read_state
    from parley.wire.keys import queue_name

    client, settings = _pipeline_client(redis_url)
    with open_depths(settings.broker, pipeline_url=settings.pipeline, pipeline=client) as depths:
        state = read_state(client, settings.partitions, depths)
    consumers = any(row.consumers is not None for row in state.partitions)
    columns = ["partition", "queue", "depth", "lag", "owner (lease)", "in flight"]
    table = Table(*columns, *(["consumers"] if consumers else []))
    for row in state.partitions:
        lag = f"{row.lag:.1f}s" if row.lag is not None else ""
        cells = [
            str(row.partition),
            queue_name(row.partition),
            "?" if row.depth is None else str(row.depth),
            lag if state.lag_known else "n/a",
            row.owner or "-",
            " ".join(f"{count} on {node}" for node, count in sorted(row.in_flight.items())),
        ]
        if consumers:
            cells.append("?" if row.consumers is None else str(row.consumers))
        table.add_row(*cells)
    console = _console()
    console.print(table)
    if state.broker_error:
        console.print(f"queue depths: unknown ({state.broker_error})")
    elif not state.lag_known:
        console.print(
            "lag: n/a on this broker (RabbitMQ cannot show a queue's oldest message "
            "without taking it); watch the depth"
        )
    owned = Counter(row.owner for row in state.partitions)
    running: Counter[str] = Counter()
    for row in state.partitions:
        running.update(row.in_flight)
    if state.nodes:
        nodes = Table("live node", "partitions", "in flight", "heartbeat expires in")
        for name, left in sorted(state.nodes.items()):
            nodes.add_row(name, str(owned[name]), str(running[name]), f"{left:.1f}s")
        console.print(nodes)
    else:
        console.print("no live worker nodes (--partitions auto)")
    console.print(
        f"replay log: {_count(state.replay_log, 'envelope')}   "
        f"dead letters: {state.dead_letters}   "
        f"recovered by the reconciler: {state.recovered}"
    )
    if state.next_timer is None:
        console.print("timers pending: 0")
    else:
        when = state.next_timer
        due = f"due in {when:.1f}s" if when >= 0 else f"overdue by {-when:.1f}s"
        if when < -5:
            due += ": is any worker node running?"
        console.print(f"timers pending: {state.timers} (the next {due})")
    try:
        report = _reconcile(settings, None, dry_run=True)
    except click.ClickException as exc:
        console.print(f"unaccounted for: unknown ({exc.message})")
    else:
        more = " and more not checked" if report.full else ""
        console.print(
            f"unaccounted for: {len(report.lost)} of the "
            f"{_count(report.checked, 'logged webhook')} past the grace period after the "
            f"reconciler's cursor{more}"
        )
