"""The demo: a burst through every stage on the local stack, with a live progress
line and a summary. Run it with ``scripts/demo`` (which starts the stack first).

    python3 -m harness.demo [--events 3000] [--bad-every 50] [--keep-workers]
"""

from __future__ import annotations

import argparse
import sys
import time
import uuid
from collections import Counter

from confluent_kafka import Producer

from app.models import PRIORITIES
from app.runtime import registry_client
from app.serde import Serde
from app.settings import PROJECT_ROOT, Settings
from app.templating import TemplateStore
from app.topology import DEAD, RAW, SENT, topic_name, topic_schemas
from harness import burst
from harness.observe import Observer, Tally, percentile
from harness.workers import Workers, one_host_env


def progress_line(produced: int, acked: int, total: int, tally: Tally, elapsed: float) -> str:
    done = tally.done
    width = 30
    filled = int(width * done / total) if total else width
    bar = "#" * filled + "-" * (width - filled)
    return (
        f"\r[{bar}] {done:>6}/{total} done | produced {produced} acked {acked} | "
        f"sent {len(tally.sent)} dead {len(tally.dead) + len(tally.dead_without_id)} | "
        f"{elapsed:5.1f}s"
    )


def summary(total: int, acked: int, tally: Tally, elapsed: float) -> str:
    lines = [
        "",
        "Spillway demo summary",
        f"  events produced      {total}",
        f"  accepted by Kafka    {acked}",
        f"  sent                 {len(tally.sent)}",
        f"  dead letters         {len(tally.dead) + len(tally.dead_without_id)}",
        f"  drained in           {elapsed:.1f} s",
        "",
        "  time-to-send (Kafka accept -> provider accept), ms",
        f"  {'priority':<10}{'count':>8}{'p50':>10}{'p99':>10}",
    ]
    for p in PRIORITIES:
        values = tally.time_to_send_ms(p)
        p50, p99 = percentile(values, 50), percentile(values, 99)
        fmt = lambda v: f"{v:10.0f}" if v is not None else f"{'-':>10}"  # noqa: E731
        lines.append(f"  {p:<10}{len(values):>8}{fmt(p50)}{fmt(p99)}")
    lines += ["", "  dead letters by reason"]
    for reason, n in sorted(tally.reasons().items()):
        lines.append(f"    {reason:<24}{n:>6}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--events", type=int, default=3000)
    parser.add_argument(
        "--bad-every", type=int, default=50, help="every Nth event is malformed (0: none)"
    )
    parser.add_argument("--timeout", type=float, default=300.0)
    args = parser.parse_args(argv)

    ns = f"demo{uuid.uuid4().hex[:6]}"
    overrides = {"SPILLWAY_TOPIC_NAMESPACE": f"{ns}.", "SPILLWAY_APP_ID_PREFIX": ns}
    settings = Settings(topic_namespace=f"{ns}.", app_id_prefix=ns)
    registry = registry_client(settings)
    serde = Serde(registry, topic_schemas(settings))
    serde.register()
    store = TemplateStore(settings.templates_dir)
    samples = {n: store.sample_data(n) for n in store.names()}
    print(f"namespace {ns!r}: topics {settings.topic('email.*')}; worker logs in var/{ns}/")

    workers = Workers(overrides, PROJECT_ROOT / "var" / ns)
    for stage in ("render", "route", "dispatch"):
        workers.add(stage, **one_host_env(stage))
    print("starting one worker per stage (render, route, dispatch) ...", flush=True)
    if not workers.wait_ready(settings.kafka.bootstrap, ns):
        print("workers did not join their consumer groups in time", file=sys.stderr)
    observer = Observer(
        settings.kafka.bootstrap, serde, topic_name(SENT, settings), topic_name(DEAD, settings)
    ).start()
    acked = Counter[str]()

    def on_delivery(err: object, _msg: object) -> None:
        acked["ok" if err is None else "error"] += 1

    producer = Producer(
        {"bootstrap.servers": settings.kafka.bootstrap, "linger.ms": 5, "acks": "all"}
    )
    raw_topic = topic_name(RAW, settings)
    started = time.monotonic()
    produced = 0
    try:
        for e in burst.events(
            args.events, serde, raw_topic, samples, prefix=ns, bad_every=args.bad_every
        ):
            producer.produce(raw_topic, key=e.key, value=e.value, on_delivery=on_delivery)
            producer.poll(0)
            produced += 1
        while True:
            producer.poll(0.1)
            workers.check_alive()
            tally = observer.snapshot()
            elapsed = time.monotonic() - started
            sys.stdout.write(progress_line(produced, acked["ok"], args.events, tally, elapsed))
            sys.stdout.flush()
            if tally.done >= args.events or elapsed > args.timeout:
                break
            time.sleep(0.25)
        producer.flush(10)
        elapsed = time.monotonic() - started
        tally = observer.snapshot()
        print(summary(args.events, acked["ok"], tally, elapsed))
        if tally.done < args.events:
            print(
                f"\nTIMED OUT: {args.events - tally.done} events did not finish "
                f"within {args.timeout:.0f} s",
                file=sys.stderr,
            )
            return 1
        return 0
    finally:
        observer.stop()
        workers.stop()
        registry.close()


if __name__ == "__main__":
    raise SystemExit(main())
