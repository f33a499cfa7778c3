#!/usr/bin/env python3
"""Reads COUNT records of partition 0 of RUNNEL_TOPIC on RUNNEL_BOOTSTRAP from offset
OFFSET with confluent-kafka (an assigned partition, no group), and prints one JSON line
per record: offset, key, value, headers, timestamp. Errors the client reports as
retriable are retried by librdkafka itself. Exit 0 once COUNT records arrived; 1 if they
did not within TIMEOUT seconds (stderr says how many did).

Usage: consume_from.py OFFSET COUNT TIMEOUT
"""

import json
import os
import sys
import time

from confluent_kafka import Consumer, TopicPartition

offset, count, timeout = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3])
consumer = Consumer({
    "bootstrap.servers": os.environ["RUNNEL_BOOTSTRAP"],
    "group.id": "unused",
    "enable.auto.commit": False,
    "fetch.wait.max.ms": 100,
})
consumer.assign([TopicPartition(os.environ["RUNNEL_TOPIC"], 0, offset)])
deadline = time.monotonic() + timeout
received = 0
while received < count and time.monotonic() < deadline:
    message = consumer.poll(0.2)
    if message is None:
        continue
    if message.error():
        print(f"consume_from: {message.error()}", file=sys.stderr, flush=True)
        continue
    headers = [[k, (v or b"").decode()] for k, v in (message.headers() or [])]
    print(json.dumps({
        "offset": message.offset(),
        "key": (message.key() or b"").decode(),
        "value": (message.value() or b"").decode(),
        "headers": headers,
        "timestamp": message.timestamp()[1],
    }), flush=True)
    received += 1
consumer.close()
if received < count:
    print(f"consume_from: {received} of {count} records in {timeout} s", file=sys.stderr)
    sys.exit(1)
