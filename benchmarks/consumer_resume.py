"""How long a restarted consumer process takes to consume again (issue 11, item 8).

The parent starts an embedded Kafka (librdkafka mock cluster) or uses ``--bootstrap``,
produces one rating every 20 ms, and runs a child process that consumes with the real
subscriber options of a streamrec group (``consumers.policy.batch_subscriber_options``). Each
cycle kills the child (SIGKILL by default, ``--signal term`` for a clean stop), starts a new
one at once and measures, from the new process's start:

* ``ready``: the interpreter and imports are up (a floor no consumer setting can lower);
* ``resumed``: the first batch is consumed.

Each child holds the group's lock file and records its member id in it, as ``streamrec
consume`` does (``consumers.membership``); a new child first sends LeaveGroup for the member its
killed predecessor left in the group, unless ``--no-leave``. ``--compare`` alternates the two
from one cycle to the next, so both are measured in the same run.

    .venv/bin/python benchmarks/consumer_resume.py --cycles 5 [--no-leave | --compare]
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TOPIC = "streamrec.ratings"
GROUP = "streamrec-bench-resume"


async def _child(bootstrap: str, extra: dict[str, object], hold_dir: str, leave: bool) -> None:
    # Imported here: the parent's timing of the child covers them, as it would in production.
    from faststream.kafka import KafkaBroker
    from faststream.kafka import Topic as KafkaTopic

    from streamrec.consumers.membership import hold_groups, joined_members
    from streamrec.consumers.policy import batch_subscriber_options
    from streamrec.core.settings import Settings

    print(f"ready {time.time():.3f}", flush=True)
    # The options streamrec uses on this kind of broker (they differ: session timeout).
    kind = "embedded" if os.environ.get("BENCH_EMBEDDED") else bootstrap
    settings = Settings(_env_file=None, kafka_bootstrap=kind)  # type: ignore[call-arg]
    broker = KafkaBroker([bootstrap], log_level=logging.DEBUG)
    options = {**batch_subscriber_options(settings, GROUP), **extra}

    @broker.subscriber(KafkaTopic(TOPIC, declare=False), **options)
    async def handle(body: list[bytes | None]) -> None:
        print(f"batch {time.time():.3f} {len(body)}", flush=True)

    with hold_groups(Path(hold_dir), [GROUP], "consumer_resume") as hold:  # type: ignore[list-item]
        if leave:
            await hold.leave_dead_members([bootstrap])
        await broker.start()
        hold.record_members(joined_members(broker), [bootstrap])
        stop = asyncio.Event()
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
        await stop.wait()
        await broker.stop()


def _spawn(
    bootstrap: str, extra: list[str], embedded: str, hold_dir: str, leave: bool
) -> tuple[subprocess.Popen[str], float]:
    started = time.time()
    sets = [a for option in extra for a in ("--set", option)]
    flags = ["--hold", hold_dir, *(["--leave"] if leave else [])]
    child = subprocess.Popen(
        [sys.executable, __file__, "--child", bootstrap, *sets, *flags],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT), "BENCH_EMBEDDED": embedded},
    )
    return child, started


def _first(child: subprocess.Popen[str], word: str) -> float:
    assert child.stdout is not None
    for line in child.stdout:
        if line.startswith(word):
            return float(line.split()[1])
    raise RuntimeError(f"the child exited before '{word}'")


def _value(text: str) -> object:
    return int(text) if text.lstrip("-").isdigit() else text


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cycles", type=int, default=5)
    parser.add_argument("--signal", choices=("kill", "term"), default="kill")
    parser.add_argument("--bootstrap", help="a real Kafka; default: an embedded mock cluster")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="OPTION=VALUE",
        help="an extra aiokafka consumer option to compare, e.g. session_timeout_ms=6000",
    )
    parser.add_argument(
        "--no-leave",
        action="store_true",
        help="do not send LeaveGroup for the killed child's member (the old behaviour)",
    )
    parser.add_argument(
        "--compare", action="store_true", help="alternate leave / no leave from cycle to cycle"
    )
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--hold", help=argparse.SUPPRESS)
    parser.add_argument("--leave", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        extra = {k: _value(v) for k, v in (o.split("=", 1) for o in args.set)}
        asyncio.run(_child(args.child, extra, args.hold, args.leave))
        return

    from confluent_kafka import Producer

    from streamrec.core.embedded import EmbeddedKafka

    kafka = None
    if args.bootstrap:
        bootstrap = args.bootstrap
    else:
        kafka = EmbeddedKafka()
        kafka.ensure_topics([TOPIC])
        bootstrap = kafka.bootstrap
    producing = threading.Event()
    producing.set()

    def produce() -> None:
        producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 0})
        n = 0
        while producing.is_set():
            producer.produce(TOPIC, f'{{"n": {n}}}'.encode(), key=str(n % 16).encode())
            producer.poll(0)
            n += 1
            time.sleep(0.02)
        producer.flush(5)

    threading.Thread(target=produce, daemon=True).start()
    embedded = "" if args.bootstrap else "1"
    hold_dir = tempfile.mkdtemp(prefix="consumer_resume-")
    child, started = _spawn(bootstrap, args.set, embedded, hold_dir, leave=False)
    first = _first(child, "batch") - started
    print(f"first start (fresh group): {first:.2f} s to the first batch", flush=True)
    stop = signal.SIGKILL if args.signal == "kill" else signal.SIGTERM
    resumed: dict[str, list[float]] = {"leave": [], "no leave": []}
    for cycle in range(1, args.cycles + 1):
        time.sleep(1.0)  # let it commit a few batches
        child.send_signal(stop)
        child.wait()
        leave = cycle % 2 == 1 if args.compare else not args.no_leave
        child, started = _spawn(bootstrap, args.set, embedded, hold_dir, leave)
        ready = _first(child, "ready") - started
        batch = _first(child, "batch") - started
        mode = "leave" if leave else "no leave"
        resumed[mode].append(batch)
        print(
            f"cycle {cycle} ({args.signal}, {mode}): ready {ready:.2f} s, resumed {batch:.2f} s",
            flush=True,
        )
    child.send_signal(signal.SIGTERM)
    child.wait(timeout=30)
    producing.clear()
    for mode, times in resumed.items():
        if times:
            print(
                f"resume after {args.signal} ({mode}): median {statistics.median(times):.2f} s, "
                f"max {max(times):.2f} s over {len(times)} restarts"
            )
    if kafka is not None:
        kafka.close()


if __name__ == "__main__":
    main()
