#!/usr/bin/env python3
"""kafka-python (pure Python, idempotent producer by default) against a Runnel node, end to end.

Environment: RUNNEL_BOOTSTRAP (host:port of the Kafka listener) and RUNNEL_TOPIC (a name
unused so far; this script creates and deletes it).

Steps: create the topic with 3 partitions (CreateTopics, then Metadata until every partition
has a leader); produce keyed, unkeyed and null values with every codec (snappy, lz4 and zstd
come from python-snappy, lz4 and zstandard in the venv), with headers and explicit
timestamps on some, through the idempotent producer (InitProducerId); consume every
partition from the beginning by manual assignment, without a group; compare what came back
with what was sent; ListOffsets (earliest, latest, by timestamp); DescribeConfigs, then
IncrementalAlterConfigs of retention.ms (AlterConfigs if the node does not advertise the
incremental API), DescribeConfigs again; DeleteTopics and check the topic left the metadata.

Exit 0 when everything matched. Otherwise one line on stderr, "kafka-python: <step>:
<what differed>", and exit 1.
"""

import os
import signal
import sys
import time
from collections import Counter

from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from kafka.admin import ConfigResource, KafkaAdminClient

BOOTSTRAP = os.environ["RUNNEL_BOOTSTRAP"]
TOPIC = os.environ["RUNNEL_TOPIC"]
PARTITIONS = 3
CODECS = ["none", "gzip", "snappy", "lz4", "zstd"]
MESSAGES_PER_CODEC = 12
NEW_RETENTION_MS = "5400000"
WHOLE_RUN_SECONDS = 150
WAIT_SECONDS = 30
CREATE_TIME = 0

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
    admin.create_topics({TOPIC: {"num_partitions": PARTITIONS, "replication_factor": 1}},
                        timeout_ms=10_000, wait_for_metadata=True)
    described = admin.describe_topics([TOPIC])
    if len(described) != 1 or len(described[0]["partitions"]) != PARTITIONS:
        raise Mismatch(f"metadata does not show {PARTITIONS} partitions: {described}")


def produce_all():
    """Returns every sent message, in the order sent, with the partition the broker
    acknowledged."""
    sent = []
    base_ms = (int(time.time()) - 3600) * 1000
    for codec_index, codec in enumerate(CODECS):
        step(f"produce with compression {codec}")
        producer = KafkaProducer(bootstrap_servers=BOOTSTRAP, linger_ms=50,
                                 compression_type=None if codec == "none" else codec)
        pending = []
        for message in planned_messages(codec, codec_index, base_ms):
            future = producer.send(TOPIC, key=message["key"], value=message["value"],
                                   headers=list(message["headers"]),
                                   timestamp_ms=message["timestamp"])
            pending.append((message, future))
        producer.flush(timeout=WAIT_SECONDS)
        for message, future in pending:
            message["partition"] = future.get(timeout=WAIT_SECONDS).partition
            sent.append(message)
        producer.close()
    return sent


def consume_all(consumer, partitions):
    """Reads every partition from offset 0 up to its end offset; returns the records of each
    partition."""
    step("consume from the beginning")
    high = {tp.partition: offset for tp, offset in consumer.end_offsets(partitions).items()}
    consumer.seek_to_beginning(*partitions)
    records = {p: [] for p in range(PARTITIONS)}
    next_offset = {p: 0 for p in range(PARTITIONS)}
    deadline = time.monotonic() + WAIT_SECONDS
    while any(next_offset[p] < high[p] for p in range(PARTITIONS)):
        if time.monotonic() > deadline:
            raise Mismatch(f"reached offsets {next_offset} of end offsets {high} before the timeout")
        for tp, batch in consumer.poll(timeout_ms=500).items():
            for record in batch:
                if record.timestamp_type != CREATE_TIME:
                    where = f"partition {tp.partition} offset {record.offset}"
                    raise Mismatch(f"{where}: timestamp type {record.timestamp_type}, not CreateTime")
                records[tp.partition].append({
                    "offset": record.offset, "key": record.key, "value": record.value,
                    "headers": tuple(record.headers), "timestamp": record.timestamp})
                next_offset[tp.partition] = record.offset + 1
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


def check_list_offsets(consumer, partitions, records):
    step("list offsets")
    earliest = consumer.beginning_offsets(partitions)
    latest = consumer.end_offsets(partitions)
    future_ms = int(time.time() * 1000) + 86_400_000
    for tp in partitions:
        p, mine = tp.partition, records[tp.partition]
        if (earliest[tp], latest[tp]) != (0, len(mine)):
            raise Mismatch(f"partition {p}: earliest {earliest[tp]}, latest {latest[tp]}, "
                           f"expected 0 and {len(mine)}")
        middle_ms = mine[len(mine) // 2]["timestamp"] if mine else 0
        wanted = min((r["offset"] for r in mine if r["timestamp"] >= middle_ms), default=None)
        found = consumer.offsets_for_times({tp: middle_ms})[tp]
        if (found.offset if found else None) != wanted:
            raise Mismatch(f"partition {p}, timestamp {middle_ms}: {found}, expected offset {wanted}")
        found = consumer.offsets_for_times({tp: future_ms})[tp]
        if found is not None:
            raise Mismatch(f"partition {p}: a timestamp after every record found {found}")


def described_retention(admin):
    described = admin.describe_configs([ConfigResource("TOPIC", TOPIC)], config_filter="all")
    entry = described.get("topic", {}).get(TOPIC, {}).get("retention.ms")
    if entry is None:
        raise Mismatch(f"retention.ms missing from the described configs {described}")
    return entry["value"]


def check_configs(admin):
    step("describe and alter configs")
    described_retention(admin)
    change = ConfigResource("TOPIC", TOPIC, configs={"retention.ms": NEW_RETENTION_MS})
    result = admin.alter_configs([change])
    if result.get("topic", {}).get(TOPIC) != "OK":
        raise Mismatch(f"altering retention.ms answered {result}")
    after = described_retention(admin)
    if after != NEW_RETENTION_MS:
        raise Mismatch(f"retention.ms is {after} after setting it to {NEW_RETENTION_MS}")


def delete_topic(admin):
    step("delete topic")
    admin.delete_topics([TOPIC], timeout_ms=10_000)
    deadline = time.monotonic() + WAIT_SECONDS
    while TOPIC in admin.list_topics():
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
    print(f"kafka-python: {current_step}: no result after {WHOLE_RUN_SECONDS} s",
          file=sys.stderr)
    os._exit(1)


def main():
    signal.signal(signal.SIGALRM, on_alarm)
    signal.alarm(WHOLE_RUN_SECONDS)
    try:
        step("connect")
        admin = KafkaAdminClient(bootstrap_servers=BOOTSTRAP,
                                 request_timeout_ms=WAIT_SECONDS * 1000)
        create_topic(admin)
        started_ms = int(time.time() * 1000)
        sent = produce_all()
        consumer = KafkaConsumer(bootstrap_servers=BOOTSTRAP, group_id=None, enable_auto_commit=False)
        partitions = [TopicPartition(TOPIC, p) for p in range(PARTITIONS)]
        consumer.assign(partitions)
        records = consume_all(consumer, partitions)
        compare(sent, records, (started_ms, int(time.time() * 1000)))
        check_list_offsets(consumer, partitions, records)
        consumer.close()
        check_configs(admin)
        delete_topic(admin)
    except Exception as error:  # one line for the test's failure message, whatever went wrong
        print(f"kafka-python: {current_step}: {describe(error)}", file=sys.stderr)
        return 1
    print("kafka-python: all checks passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
