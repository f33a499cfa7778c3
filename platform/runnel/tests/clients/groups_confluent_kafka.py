"""Consumer groups with confluent-kafka (librdkafka) against a Runnel node.

Environment: RUNNEL_BOOTSTRAP (host:port), RUNNEL_TOPIC (a new topic name), and
RUNNEL_GROUP_PROTOCOL: "classic" (the default) or "consumer" (KIP-848, the broker assigns).

Two consumers in one group (with the cooperative-sticky assignor under the classic
protocol, with the broker's uniform assignor under the consumer protocol) on a topic with
two partitions each get one partition; the admin client describes the group with both; when one leaves, the other gets both; everything
produced is consumed, and a consumer started again in the group resumes from the
committed offsets without reading anything twice or skipping anything. Exits 0 when all
of that held, else prints one line saying what differed and exits 1.
"""

import os
import sys
import time

from confluent_kafka import Consumer, KafkaError, KafkaException, Producer
from confluent_kafka.admin import AdminClient, NewTopic

BOOTSTRAP = os.environ["RUNNEL_BOOTSTRAP"]
TOPIC = os.environ["RUNNEL_TOPIC"]
GROUP = f"{TOPIC}-group"
PROTOCOL = os.environ.get("RUNNEL_GROUP_PROTOCOL", "classic")
WAIT = 60.0


def fail(message):
    print(f"confluent-kafka groups: {message}")
    sys.exit(1)


def step(name):
    print(f"== {name}", flush=True)


def consumer(name):
    config = {
        "bootstrap.servers": BOOTSTRAP,
        "group.id": GROUP,
        "client.id": name,
        "auto.offset.reset": "earliest",
        "enable.auto.commit": False,
    }
    if PROTOCOL == "consumer":
        # Timeouts and the assignor are the broker's under KIP-848; librdkafka refuses them.
        config["group.protocol"] = "consumer"
    else:
        config.update({
            "partition.assignment.strategy": "cooperative-sticky",
            "session.timeout.ms": 10000,
            "heartbeat.interval.ms": 500,
        })
    c = Consumer(config)
    c.subscribe([TOPIC])
    return c


def produce(values):
    p = Producer({"bootstrap.servers": BOOTSTRAP})
    for i, value in enumerate(values):
        p.produce(TOPIC, value=value.encode(), partition=i % 2)
    if p.flush(30) != 0:
        fail("produce did not complete")


def commit_positions(c):
    """Commits what was consumed, retrying while the group rebalances."""
    deadline = time.time() + WAIT
    while True:
        try:
            c.commit(asynchronous=False)
            return
        except KafkaException as error:
            if error.args[0].code() == KafkaError._NO_OFFSET:
                return
            if time.time() > deadline:
                fail(f"could not commit: {error}")
            c.poll(0.2)


def poll_until(consumers, condition, what, received):
    deadline = time.time() + WAIT
    while time.time() < deadline:
        for c in consumers:
            message = c.poll(0.1)
            if message is None:
                continue
            if message.error():
                continue
            received.append((message.partition(), message.offset(), message.value().decode()))
            try:
                c.commit(message=message, asynchronous=False)
            except KafkaException:
                pass  # during a rebalance; the next commit covers this record
        if condition():
            for c in consumers:
                commit_positions(c)
            return
    fail(f"timed out waiting: {what}; assignments "
         f"{[sorted(p.partition for p in c.assignment()) for c in consumers]}")


def describe_group(admin, members):
    """The admin client sees the group with `members` members, each with one partition."""
    described = admin.describe_consumer_groups([GROUP])[GROUP].result(30)
    if len(described.members) != members:
        fail(f"the group is described with {len(described.members)} members, not {members}")
    assigned = sorted(
        p.partition for m in described.members for p in m.assignment.topic_partitions)
    if assigned != [0, 1]:
        fail(f"the described assignment is {assigned}, not [0, 1]")
    kind = getattr(described, "type", None)
    print("described:", kind, described.state, [(m.member_id, [p.partition for p in m.assignment.topic_partitions]) for m in described.members], flush=True)
    if PROTOCOL == "consumer" and kind is not None and "CONSUMER" not in str(kind):
        fail(f"the group is described as {kind}, not a consumer-protocol group")


def main():
    step("create topic")
    admin = AdminClient({"bootstrap.servers": BOOTSTRAP})
    for future in admin.create_topics([NewTopic(TOPIC, num_partitions=2)]).values():
        future.result(30)

    first = [f"first-{i}" for i in range(10)]
    produce(first)
    received = []

    step("two members split the partitions")
    a = consumer("a")
    b = consumer("b")
    both = [a, b]
    poll_until(both, lambda: sorted(p.partition for p in a.assignment()) in ([0], [1])
               and sorted(p.partition for p in b.assignment()) in ([0], [1])
               and len(received) >= len(first), "one partition each and the first records", received)
    if {p.partition for p in a.assignment()} & {p.partition for p in b.assignment()}:
        fail("both members were given the same partition")
    describe_group(admin, 2)

    step("one leaves, the other takes both")
    b.close()
    second = [f"second-{i}" for i in range(10)]
    produce(second)
    poll_until([a], lambda: sorted(p.partition for p in a.assignment()) == [0, 1]
               and len(received) >= len(first) + len(second), "the remaining member owns both", received)
    a.close()

    step("a restarted member resumes from the committed offsets")
    third = [f"third-{i}" for i in range(6)]
    produce(third)
    c = consumer("c")
    poll_until([c], lambda: len(received) >= len(first) + len(second) + len(third),
               "the records produced while nobody consumed", received)
    # Anything more would be a record read twice.
    extra = c.poll(2.0)
    if extra is not None and not extra.error():
        fail(f"read {extra.value().decode()!r} again after resuming")
    c.close()

    values = sorted(v for _, _, v in received)
    if values != sorted(first + second + third):
        fail(f"consumed {len(values)} records, expected each of {len(first + second + third)} once")
    print("confluent-kafka groups: all checks passed")


if __name__ == "__main__":
    main()
