#!/usr/bin/env python3
"""confluent-kafka (librdkafka) against a Runnel node, end to end.

Environment: RUNNEL_BOOTSTRAP (host:port of the Kafka listener) and RUNNEL_TOPIC (a name
unused so far; this script creates and deletes it).

Steps: create the topic with 3 partitions (CreateTopics); produce keyed, unkeyed and null
values with every codec librdkafka has, with headers and explicit timestamps on some;
consume every partition from the beginning by manual assignment (no group coordinator:
group.id is set only because the client requires it, nothing is ever committed); compare
what came back with what was sent; ListOffsets (earliest, latest, by timestamp);
DescribeConfigs, IncrementalAlterConfigs of retention.ms, DescribeConfigs again;
DeleteTopics and check the topic left the metadata.

Exit 0 when everything matched. Otherwise one line on stderr, "confluent-kafka: <step>:
<what differed>", and exit 1. librdkafka's own log lines may come before it.
"""

import os
import signal
import sys
import time
from collections import Counter

from confluent_kafka import OFFSET_BEGINNING, TIMESTAMP_CREATE_TIME, Consumer, Producer, TopicPartition
from confluent_kafka.admin import (
    AdminClient, AlterConfigOpType, ConfigEntry, ConfigResource, NewTopic, OffsetSpec, ResourceType)

BOOTSTRAP = os.environ["RUNNEL_BOOTSTRAP"]
TOPIC = os.environ["RUNNEL_TOPIC"]
PARTITIONS = 3
CODECS = ["none", "gzip", "snappy", "lz4", "zstd"]
MESSAGES_PER_CODEC = 12
NEW_RETENTION_MS = "5400000"
WHOLE_RUN_SECONDS = 150
WAIT_SECONDS = 30

current_step = "start"


class Mismatch(Exception):
    """A check failed; the message says what differed."""


def abbreviated(text, limit=200):
    """`text` on one line, cut to `limit` characters: values here are long and repetitive."""
    text = " ".join(text.split("\n"))
    return text if len(text) <= limit else text[:limit] + "..."


def briefly(records):
    """At most three (key, value, headers) records, values cut short, for a failure message."""
    cut = [(k, v[:24] + b"..." if v and len(v) > 24 else v, h) for k, v, h in list(records)[:3]]
    return repr(cut) + (" and more" if len(records) > 3 else "")


def step(name):
    global current_step
    current_step = name
    print(f"== {name}", flush=True)


def planned_messages(codec, codec_index, base_ms):
    """The messages one producer sends: unique values, keys on most, a null value, headers
    on even ones and an explicit (hour-old) timestamp on every fourth."""
    for i in range(MESSAGES_PER_CODEC):
        key = None if i % 3 == 2 else f"key-{i % 4}".encode()
        value = f"{codec} message {i} ".encode() + b"runnel " * 40
        if i == 7:
            key, value = f"gone-{codec}".encode(), None
        headers = (("index", str(i).encode()), ("codec", codec.encode())) if i % 2 == 0 else ()
        timestamp = base_ms + codec_index * 100 + i if i % 4 == 0 else None
        yield {"key": key, "value": value, "headers": headers, "timestamp": timestamp}


def create_topic(admin):
    step("create topic")
    new_topic = NewTopic(TOPIC, num_partitions=PARTITIONS)
    admin.create_topics([new_topic], operation_timeout=10)[TOPIC].result(timeout=WAIT_SECONDS)
    deadline = time.monotonic() + WAIT_SECONDS
    while True:
        topic = admin.list_topics(timeout=10).topics.get(TOPIC)
        partitions = topic.partitions.values() if topic is not None and topic.error is None else []
        if len(partitions) == PARTITIONS and all(p.leader >= 0 for p in partitions):
            return
        if time.monotonic() > deadline:
            raise Mismatch(f"metadata never showed {PARTITIONS} partitions with leaders: {topic}")
        time.sleep(0.2)


def delivery_report(message, errors):
    """A delivery callback that records the partition in `message`, or the error in `errors`."""
    def on_delivery(error, delivered):
        if error is not None:
            errors.append(error)
        else:
            message["partition"] = delivered.partition()
    return on_delivery


def produce_all():
    """Returns every sent message, in the order sent, with the partition its delivery report
    named."""
    sent = []
    base_ms = (int(time.time()) - 3600) * 1000
    for codec_index, codec in enumerate(CODECS):
        step(f"produce with compression {codec}")
        producer = Producer({"bootstrap.servers": BOOTSTRAP, "compression.type": codec,
                             "linger.ms": 50})
        errors = []
        for message in planned_messages(codec, codec_index, base_ms):
            sent.append(message)
            producer.produce(TOPIC, key=message["key"], value=message["value"],
                             headers=list(message["headers"]), timestamp=message["timestamp"] or 0,
                             on_delivery=delivery_report(message, errors))
        producer.flush(WAIT_SECONDS)
        undelivered = sum(1 for m in sent if "partition" not in m)
        if errors or undelivered:
            raise Mismatch(f"{undelivered} messages without a delivery report, errors: {errors[:3]}")
    return sent


def consume_all():
    """Reads every partition from offset 0 up to its high watermark; returns the records of
    each partition."""
    step("consume from the beginning")
    consumer = Consumer({"bootstrap.servers": BOOTSTRAP, "group.id": f"{TOPIC}-unused",
                         "enable.auto.commit": False, "enable.auto.offset.store": False})
    high = {p: consumer.get_watermark_offsets(TopicPartition(TOPIC, p), timeout=10)[1]
            for p in range(PARTITIONS)}
    consumer.assign([TopicPartition(TOPIC, p, OFFSET_BEGINNING) for p in range(PARTITIONS)])
    records = {p: [] for p in range(PARTITIONS)}
    next_offset = {p: 0 for p in range(PARTITIONS)}
    deadline = time.monotonic() + WAIT_SECONDS
    while any(next_offset[p] < high[p] for p in range(PARTITIONS)):
        if time.monotonic() > deadline:
            raise Mismatch(f"reached offsets {next_offset} of high watermarks {high} before the timeout")
        message = consumer.poll(0.5)
        if message is None:
            continue
        if message.error() is not None:
            raise Mismatch(f"consumer error: {message.error()}")
        timestamp_type, timestamp = message.timestamp()
        if timestamp_type != TIMESTAMP_CREATE_TIME:
            where = f"partition {message.partition()} offset {message.offset()}"
            raise Mismatch(f"{where}: timestamp type {timestamp_type}, not CreateTime")
        records[message.partition()].append({
            "offset": message.offset(), "key": message.key(), "value": message.value(),
            "headers": tuple(message.headers() or ()), "timestamp": timestamp})
        next_offset[message.partition()] = message.offset() + 1
    consumer.close()
    return records


def compare(sent, records, produce_window):
    step("compare consumed with sent")
    for p in range(PARTITIONS):
        offsets = [r["offset"] for r in records[p]]
        if offsets != list(range(len(offsets))):
            raise Mismatch(f"partition {p}: offsets {offsets} are not 0, 1, 2, ...")
        want = Counter((m["key"], m["value"], m["headers"]) for m in sent if m["partition"] == p)
        got = Counter((r["key"], r["value"], r["headers"]) for r in records[p])
        if want != got:
            raise Mismatch(f"partition {p}: missing {briefly(want - got)}, "
                           f"unexpected {briefly(got - want)}")
    check_timestamps(sent, records, produce_window)
    check_order_per_key(sent, records)


def check_timestamps(sent, records, produce_window):
    """Explicit timestamps come back exactly; the others lie within the produce run."""
    explicit = {(m["key"], m["value"]): m["timestamp"] for m in sent}
    earliest_ms, latest_ms = produce_window[0] - 1000, produce_window[1] + 1000
    for p in range(PARTITIONS):
        for r in records[p]:
            wanted, where = explicit[(r["key"], r["value"])], f"partition {p} offset {r['offset']}"
            if wanted is not None and r["timestamp"] != wanted:
                raise Mismatch(f"{where}: timestamp {r['timestamp']}, sent {wanted}")
            if wanted is None and not earliest_ms <= r["timestamp"] <= latest_ms:
                raise Mismatch(f"{where}: timestamp {r['timestamp']} is outside the produce run")


def check_order_per_key(sent, records):
    """Every key's records sit in one partition, in the order they were sent."""
    for key in {m["key"] for m in sent if m["key"] is not None}:
        sent_values = [m["value"] for m in sent if m["key"] == key]
        partitions = sorted({p for p in range(PARTITIONS) for r in records[p] if r["key"] == key})
        got_values = [r["value"] for p in partitions for r in records[p] if r["key"] == key]
        if len(partitions) != 1:
            raise Mismatch(f"key {key!r}: records spread over partitions {partitions}")
        if got_values != sent_values:
            raise Mismatch(f"key {key!r}: records came back in another order than sent")


def check_list_offsets(admin, records):
    step("list offsets")
    future_ms = int(time.time() * 1000) + 86_400_000
    for p in range(PARTITIONS):
        partition, mine = TopicPartition(TOPIC, p), records[p]
        middle_ms = mine[len(mine) // 2]["timestamp"] if mine else 0
        at_or_after_middle = min((r["offset"] for r in mine if r["timestamp"] >= middle_ms), default=-1)
        expected = {
            "earliest": (OffsetSpec.earliest(), 0),
            "latest": (OffsetSpec.latest(), len(mine)),
            f"timestamp {middle_ms}": (OffsetSpec.for_timestamp(middle_ms), at_or_after_middle),
            "a timestamp after every record": (OffsetSpec.for_timestamp(future_ms), -1),
        }
        for name, (spec, wanted) in expected.items():
            answer = admin.list_offsets({partition: spec})[partition].result(timeout=WAIT_SECONDS)
            if answer.offset != wanted:
                raise Mismatch(f"partition {p}, {name}: offset {answer.offset}, expected {wanted}")


def check_configs(admin):
    step("describe and alter configs")
    resource = ConfigResource(ResourceType.TOPIC, TOPIC)
    before = admin.describe_configs([resource])[resource].result(timeout=WAIT_SECONDS)
    if "retention.ms" not in before:
        raise Mismatch(f"retention.ms missing from the described configs {sorted(before)}")
    change = ConfigResource(ResourceType.TOPIC, TOPIC, incremental_configs=[
        ConfigEntry("retention.ms", NEW_RETENTION_MS, incremental_operation=AlterConfigOpType.SET)])
    for future in admin.incremental_alter_configs([change]).values():
        future.result(timeout=WAIT_SECONDS)
    after = admin.describe_configs([resource])[resource].result(timeout=WAIT_SECONDS)
    now = after["retention.ms"].value
    if now != NEW_RETENTION_MS:
        raise Mismatch(f"retention.ms is {now} after setting it to {NEW_RETENTION_MS}")


def delete_topic(admin):
    step("delete topic")
    admin.delete_topics([TOPIC], operation_timeout=10)[TOPIC].result(timeout=WAIT_SECONDS)
    deadline = time.monotonic() + WAIT_SECONDS
    while TOPIC in admin.list_topics(timeout=10).topics:
        if time.monotonic() > deadline:
            raise Mismatch("the topic is still in the metadata")
        time.sleep(0.2)


def describe(error):
    """What went wrong, in one line: a mismatch as it is, a client error with its type."""
    if isinstance(error, Mismatch):
        return str(error)
    if isinstance(error, TimeoutError) and not str(error):
        return f"no answer within {WAIT_SECONDS} s"
    return abbreviated(f"{type(error).__name__}: {error}", limit=400)


def on_alarm(_signal, _frame):
    print(f"confluent-kafka: {current_step}: no result after {WHOLE_RUN_SECONDS} s",
          file=sys.stderr)
    os._exit(1)


def main():
    signal.signal(signal.SIGALRM, on_alarm)
    signal.alarm(WHOLE_RUN_SECONDS)
    try:
        step("connect")
        # No metadata lookup of this client may re-create the topic after it is deleted.
        admin = AdminClient({"bootstrap.servers": BOOTSTRAP, "allow.auto.create.topics": False})
        create_topic(admin)
        started_ms = int(time.time() * 1000)
        sent = produce_all()
        records = consume_all()
        compare(sent, records, (started_ms, int(time.time() * 1000)))
        check_list_offsets(admin, records)
        check_configs(admin)
        delete_topic(admin)
    except Exception as error:  # one line for the test's failure message, whatever went wrong
        print(f"confluent-kafka: {current_step}: {describe(error)}", file=sys.stderr)
        return 1
    print("confluent-kafka: all checks passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
