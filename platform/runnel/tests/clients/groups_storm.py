"""A rebalance storm with confluent-kafka against a Runnel node.

Environment: RUNNEL_BOOTSTRAP (host:port), RUNNEL_TOPIC (a new topic name),
RUNNEL_GROUP_PROTOCOL: "classic" (the default) or "consumer" (KIP-848).

A producer writes numbered records to a 6-partition topic for a while; meanwhile a group
of three members keeps changing, one member leaving and a new one joining every couple of
seconds. Each member commits what it consumed. A watcher reads the group's committed
offsets throughout. At the end every produced record was consumed by the group at least
once, and no committed offset ever went backwards. Exits 0 if so, else prints one line and
exits 1.
"""

import os
import sys
import threading
import time

from confluent_kafka import Consumer, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

BOOTSTRAP = os.environ["RUNNEL_BOOTSTRAP"]
TOPIC = os.environ["RUNNEL_TOPIC"]
GROUP = f"{TOPIC}-group"
PROTOCOL = os.environ.get("RUNNEL_GROUP_PROTOCOL", "classic")
PARTITIONS = 6
PRODUCE_SECONDS = 15
CHURN_SECONDS = 2.0
problems = []
consumed = set()
lock = threading.Lock()


def fail(message):
    print(f"rebalance storm: {message}")
    sys.exit(1)


def new_consumer(name, group=GROUP):
    config = {
        "bootstrap.servers": BOOTSTRAP,
        "group.id": group,
        "client.id": name,
        "auto.offset.reset": "earliest",
        "enable.auto.commit": False,
    }
    if PROTOCOL == "consumer":
        config["group.protocol"] = "consumer"
    else:
        config.update({"session.timeout.ms": 6000, "heartbeat.interval.ms": 300})
    return Consumer(config)


def member(name, stop):
    c = new_consumer(name)
    c.subscribe([TOPIC])
    while not stop.is_set():
        messages = c.consume(num_messages=500, timeout=0.1)
        good = [m for m in messages if not m.error()]
        with lock:
            consumed.update(m.value().decode() for m in good)
        if good:
            try:
                c.commit(asynchronous=False)
            except KafkaException:
                pass  # rebalancing; a later commit covers these
    c.close()


def watcher(stop, produced_all):
    """Reads the committed offsets all along; they must never go backwards."""
    c = new_consumer("watcher", group=GROUP)
    partitions = [TopicPartition(TOPIC, p) for p in range(PARTITIONS)]
    last = {}
    while not (stop.is_set() and produced_all.is_set()):
        try:
            committed = c.committed(partitions, timeout=5)
        except KafkaException:
            time.sleep(0.2)
            continue
        for tp in committed:
            if tp.offset < 0:
                continue
            if tp.offset < last.get(tp.partition, -1):
                problems.append(f"partition {tp.partition}: committed offset went from "
                                f"{last[tp.partition]} back to {tp.offset}")
            last[tp.partition] = max(tp.offset, last.get(tp.partition, -1))
        time.sleep(0.2)
    c.close()


def main():
    admin = AdminClient({"bootstrap.servers": BOOTSTRAP})
    for future in admin.create_topics([NewTopic(TOPIC, num_partitions=PARTITIONS)]).values():
        future.result(30)

    stop_watch = threading.Event()
    produced_all = threading.Event()
    watch = threading.Thread(target=watcher, args=(stop_watch, produced_all))
    watch.start()

    members = []
    for i in range(3):
        stop = threading.Event()
        thread = threading.Thread(target=member, args=(f"m{i}", stop))
        thread.start()
        members.append((stop, thread))

    producer = Producer({"bootstrap.servers": BOOTSTRAP, "linger.ms": 5})
    produced = []
    started = time.time()
    next_churn = started + CHURN_SECONDS
    number = 0
    while time.time() - started < PRODUCE_SECONDS:
        for _ in range(50):
            value = f"r{number}"
            producer.produce(TOPIC, value=value.encode(), key=str(number % 97).encode())
            produced.append(value)
            number += 1
        producer.poll(0)
        time.sleep(0.01)
        if time.time() >= next_churn:
            stop, thread = members.pop(0)
            stop.set()
            thread.join()
            stop = threading.Event()
            thread = threading.Thread(target=member, args=(f"m{number}", stop))
            thread.start()
            members.append((stop, thread))
            next_churn = time.time() + CHURN_SECONDS
    if producer.flush(30) != 0:
        fail("the producer did not deliver everything")
    produced_all.set()
    print(f"== produced {len(produced)} records with {int(PRODUCE_SECONDS / CHURN_SECONDS)} membership changes", flush=True)

    deadline = time.time() + 60
    while time.time() < deadline:
        with lock:
            missing = len(set(produced) - consumed)
        if missing == 0:
            break
        time.sleep(0.5)
    for stop, thread in members:
        stop.set()
        thread.join()
    stop_watch.set()
    watch.join()

    missing = set(produced) - consumed
    if missing:
        fail(f"{len(missing)} of {len(produced)} records were never consumed, e.g. {sorted(missing)[:3]}")
    if problems:
        fail(problems[0])
    print("rebalance storm: all checks passed")


if __name__ == "__main__":
    main()
