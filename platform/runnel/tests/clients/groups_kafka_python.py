"""Consumer groups with kafka-python against a Runnel node.

Environment: RUNNEL_BOOTSTRAP (host:port), RUNNEL_TOPIC (a new topic name).

Two consumers in one group on a topic with two partitions each get one partition; when one
leaves, the other gets both; a consumer started again in the group resumes from the
committed offsets. Exits 0 when all of that held, else prints one line and exits 1.
"""

import os
import sys
import time

from kafka import KafkaConsumer, KafkaProducer
from kafka.admin import KafkaAdminClient, NewTopic

BOOTSTRAP = os.environ["RUNNEL_BOOTSTRAP"]
TOPIC = os.environ["RUNNEL_TOPIC"]
GROUP = f"{TOPIC}-group"
WAIT = 60.0


def fail(message):
    print(f"kafka-python groups: {message}")
    sys.exit(1)


def step(name):
    print(f"== {name}", flush=True)


def consumer(name):
    return KafkaConsumer(
        TOPIC,
        bootstrap_servers=BOOTSTRAP,
        group_id=GROUP,
        client_id=name,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        session_timeout_ms=10000,
        heartbeat_interval_ms=500,
    )


def produce(values):
    producer = KafkaProducer(bootstrap_servers=BOOTSTRAP)
    for i, value in enumerate(values):
        producer.send(TOPIC, value=value.encode(), partition=i % 2)
    producer.flush(30)
    producer.close()


def partitions(c):
    return sorted(tp.partition for tp in c.assignment())


def poll_until(consumers, condition, what, received):
    deadline = time.time() + WAIT
    while time.time() < deadline:
        for c in consumers:
            for records in c.poll(timeout_ms=100).values():
                received.extend(r.value.decode() for r in records)
            try:
                c.commit()
            except Exception:  # a rebalance under way; the next commit covers it
                pass
        if condition():
            return
    fail(f"timed out waiting: {what}; assignments {[partitions(c) for c in consumers]}")


def main():
    step("create topic")
    admin = KafkaAdminClient(bootstrap_servers=BOOTSTRAP)
    admin.create_topics([NewTopic(TOPIC, num_partitions=2, replication_factor=1)])
    admin.close()

    first = [f"first-{i}" for i in range(10)]
    produce(first)
    received = []

    step("two members split the partitions")
    a = consumer("a")
    b = consumer("b")
    poll_until([a, b], lambda: partitions(a) in ([0], [1]) and partitions(b) in ([0], [1])
               and partitions(a) != partitions(b) and len(received) >= len(first),
               "one partition each and the first records", received)

    step("one leaves, the other takes both")
    b.close()
    second = [f"second-{i}" for i in range(10)]
    produce(second)
    poll_until([a], lambda: partitions(a) == [0, 1] and len(received) >= len(first) + len(second),
               "the remaining member owns both", received)
    a.commit()
    a.close()

    step("a restarted member resumes from the committed offsets")
    third = [f"third-{i}" for i in range(6)]
    produce(third)
    c = consumer("c")
    poll_until([c], lambda: len(received) >= len(first) + len(second) + len(third),
               "the records produced while nobody consumed", received)
    extra = [r for records in c.poll(timeout_ms=2000).values() for r in records]
    if extra:
        fail(f"read {extra[0].value.decode()!r} again after resuming")
    c.close()

    if sorted(received) != sorted(first + second + third):
        fail(f"consumed {len(received)} records, expected each of {len(first + second + third)} once")
    print("kafka-python groups: all checks passed")


if __name__ == "__main__":
    main()
