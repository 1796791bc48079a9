"""`fraud worker`, `fraud publish`, `fraud broker`: the streaming path from the command line."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import click


def _iso_date(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    """--start/--end: an ISO date or datetime, nothing else (the warehouse query is built from it)."""
    if value is None:
        return None
    from datetime import datetime

    try:
        return datetime.fromisoformat(value).isoformat(sep=" ")
    except ValueError:
        raise click.BadParameter("expected an ISO date such as 2018-09-01 or 2018-09-01T12:00") from None


def _frame(path: str | None, from_warehouse: bool, start: str | None, end: str | None):
    from ml.data.sources import resolve_source
    from ml.settings import get_settings
    from streaming.sources import load_transactions

    settings = get_settings()
    try:
        if from_warehouse:
            return load_transactions(warehouse=settings.warehouse, start=start, end=end)
        return load_transactions(path=Path(path) if path else resolve_source(settings), start=start, end=end)
    except (RuntimeError, ValueError, FileNotFoundError) as e:  # a busy warehouse, a bad --start/--end
        raise click.ClickException(str(e)) from e


@click.command("worker")
@click.option("--events", type=click.Choice(["replay", "kafka"]), default=None,
              help="Event source (default FRAUD_EVENTS, else replay).")
@click.option("--store", type=click.Choice(["memory", "redis"]), default=None,
              help="Online store (default FRAUD_ONLINE_STORE, else memory).")
@click.option("--path", type=click.Path(exists=True, dir_okay=False), default=None,
              help="Replay this CSV/Parquet file (default: the configured source).")
@click.option("--from-warehouse", is_flag=True,
              help="Replay the warehouse's transactions (the last features build's snapshot).")
@click.option("--start", default=None, callback=_iso_date, help="Replay transactions from this date (ISO).")
@click.option("--end", default=None, callback=_iso_date, help="Replay transactions before this date (ISO).")
@click.option("--speedup", type=float, default=None, help="Replay: event time runs N times wall time.")
@click.option("--rate", type=float, default=None, help="Replay: emit N events per second.")
@click.option("--bootstrap", default=None, help="Kafka bootstrap servers (default FRAUD_KAFKA_BOOTSTRAP).")
@click.option("--idle-timeout", type=float, default=None,
              help="Kafka: stop after N idle seconds (then release buffered labels). Default: run forever.")
@click.option("--max-events", type=int, default=None, help="Stop after N events.")
@click.option("--model", default=None, help="River model (see ml.online.river_model.CANDIDATES).")
@click.option("--no-champion", is_flag=True, help="Score with River only.")
@click.option("--fresh", is_flag=True, help="Ignore (delete) the existing checkpoint and start over.")
@click.option("--checkpoint-every", type=int, default=50_000, show_default=True,
              help="Events per checkpoint.")
@click.option("--compact-after", type=int, default=None,
              help="Fold the checkpoint's change log into a new base after N changes (default 500,000, "
                   "or 4 per pending transaction if more).")
@click.option("--redis-prefix", default=None, help="Key prefix in Redis (default FRAUD_REDIS_PREFIX, else fraud:).")
def worker(events, store, path, from_warehouse, start, end, speedup, rate, bootstrap, idle_timeout,
           max_events, model, no_champion, fresh, checkpoint_every, compact_after, redis_prefix) -> None:
    """Run the stream worker: online features, XGBoost + River scores, River learning, drift events."""
    import logging
    import shutil

    from ml.champion import NoChampion, load_champion
    from ml.online import checkpoint as ckpt
    from ml.online.factory import make_store
    from ml.online.river_model import make_model
    from ml.settings import get_settings
    from ml.signing import SigningKeyError, load_key
    from streaming.worker import KafkaSink, Sink, Worker, streaming_dir

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    settings = get_settings()
    settings = settings.model_copy(update={"events": events or settings.events,
                                           "online_store": store or settings.online_store,
                                           "kafka_bootstrap": bootstrap or settings.kafka_bootstrap})
    try:
        load_key()  # checkpoints are signed: a missing or unsafe key stops the worker before it starts
    except SigningKeyError as e:
        raise click.ClickException(str(e)) from None
    if fresh:
        shutil.rmtree(ckpt.river_dir(settings), ignore_errors=True)
    if settings.events == "kafka":
        from streaming.sources import KafkaSource

        source = KafkaSource(settings.kafka_bootstrap)
        sink: Sink = KafkaSink(settings.kafka_bootstrap)
    elif settings.events == "replay":
        from streaming.sources import ReplaySource

        source = ReplaySource(_frame(path, from_warehouse, start, end), speedup=speedup, rate=rate)
        sink = Sink(streaming_dir(settings))
    else:
        raise click.UsageError(f"FRAUD_EVENTS must be replay or kafka, not {settings.events!r}")
    try:
        champion = None if no_champion else load_champion()
    except NoChampion:
        champion = None
    click.echo(f"worker: events={settings.events} store={settings.online_store} "
               f"champion={champion.tag if champion else 'none (River only)'}", err=True)
    try:
        w = Worker(source, sink, make_store(settings, prefix=redis_prefix), settings, champion=champion,
                   model=make_model(model) if model else None, checkpoint_every=checkpoint_every,
                   freeze_gc=True, **({"fold_min_ops": compact_after} if compact_after else {}))
    except ckpt.CheckpointRefused as e:  # tampered, unsigned (older version) or another format: not loaded
        raise click.ClickException(f"checkpoint not restored: {e}") from None
    try:
        stats = w.run(max_events=max_events, idle_timeout=idle_timeout)
    finally:
        w.close()
    rolling = {k: None if isinstance(v, float) and math.isnan(v) else v
               for k, v in w.model.rolling_metrics().items()}  # NaN is not JSON
    out = stats.summary() | {"rolling": rolling, "checkpoint": str(w.checkpoint_dir)}
    click.echo(json.dumps(out, indent=2, default=str))


@click.command("publish")
@click.option("--path", type=click.Path(exists=True, dir_okay=False), default=None,
              help="CSV/Parquet file to publish (default: the configured source, e.g. the simulation).")
@click.option("--from-warehouse", is_flag=True,
              help="Publish the warehouse's transactions (the last features build's snapshot).")
@click.option("--start", default=None, callback=_iso_date, help="From this date (ISO).")
@click.option("--end", default=None, callback=_iso_date, help="Before this date (ISO).")
@click.option("--bootstrap", default=None, help="Kafka bootstrap servers (default FRAUD_KAFKA_BOOTSTRAP).")
@click.option("--rate", type=float, default=None, help="Events per second (default: as fast as possible).")
@click.option("--no-labels", is_flag=True, help="Publish transactions only.")
@click.option("--skip", type=int, default=0, help="Skip the first N events of the merged stream.")
@click.option("--limit", type=int, default=None, help="Publish at most N events.")
def publish(path, from_warehouse, start, end, bootstrap, rate, no_labels, skip, limit) -> None:
    """Publish transactions (and their labels, in label_time order) to Kafka.

    Events go out in event-time order: each transaction at its tx_datetime, each label at its label_time.
    --skip/--limit cut that merged stream (e.g. publish a warm-up, then the rest at a fixed --rate).
    """
    from ml.settings import get_settings
    from streaming.kafka_io import encode, ensure_topics, producer_config
    from streaming.sources import Timeline

    from confluent_kafka import Producer  # isort: skip

    bootstrap = bootstrap or get_settings().kafka_bootstrap
    df = _frame(path, from_warehouse, start, end)
    ensure_topics(bootstrap)
    producer = Producer(producer_config(bootstrap))
    timeline = Timeline(df)  # built before the clock starts, so --rate paces from the first event
    stop = len(timeline) if limit is None else min(len(timeline), skip + limit)
    t0 = time.perf_counter()
    n = 0
    for topic, value, _ in timeline.iter_events(skip, stop):
        if no_labels and topic == "labels":
            continue
        if rate:
            delay = t0 + n / rate - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
        while True:
            try:
                producer.produce(topic, encode(value), str(value["transaction_id"]))
                break
            except BufferError:
                producer.poll(0.05)
        n += 1
        if n % 5000 == 0:
            producer.poll(0)
    left = producer.flush(60)
    if left:
        raise click.ClickException(f"{left} message(s) not delivered to {bootstrap}")
    click.echo(f"published {n:,} events to {bootstrap} in {time.perf_counter() - t0:.1f}s")


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


@click.command("broker")
@click.option("--port", type=int, default=9092, show_default=True)
def broker(port: int) -> None:
    """Run a local Kafka-compatible broker (tansu, in-memory) until Ctrl-C or SIGTERM."""
    import signal

    from streaming.broker import start_broker

    b = start_broker(port, quiet=False)
    # `kill` (SIGTERM) as well as Ctrl-C stops the broker: without this, tansu outlives the command.
    signal.signal(signal.SIGTERM, _interrupt)
    click.echo(f"tansu listening on {b.bootstrap} (export FRAUD_KAFKA_BOOTSTRAP={b.bootstrap})", err=True)
    try:
        b.process.wait()
    except KeyboardInterrupt:
        b.stop()
