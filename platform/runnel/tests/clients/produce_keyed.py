#!/usr/bin/env python3
"""Produces records FIRST..LAST-1 (keys k<i>, values record-<i>, a header source=python)
to RUNNEL_TOPIC on RUNNEL_BOOTSTRAP with confluent-kafka, one at a time with a short
linger, and waits for every delivery. Exit 0 when all were acknowledged; otherwise one
line on stderr and exit 1.

Usage: produce_keyed.py FIRST LAST  (RUNNEL_RETRIES: the producer's `retries`;
RUNNEL_ACKS: its `acks`, `all` by default)
"""

import os
import sys

from confluent_kafka import Producer

first, last = int(sys.argv[1]), int(sys.argv[2])
config = {
    "bootstrap.servers": os.environ["RUNNEL_BOOTSTRAP"],
    "linger.ms": 5,
    "acks": os.environ.get("RUNNEL_ACKS", "all"),
}
# RUNNEL_RETRIES=0 reports a broker's refusal as it is, instead of retrying it until the
# delivery timeout.
if "RUNNEL_RETRIES" in os.environ:
    config["retries"] = int(os.environ["RUNNEL_RETRIES"])
producer = Producer(config)
failures = []


def delivered(error, message):
    if error is not None:
        failures.append(str(error))


for i in range(first, last):
    producer.produce(os.environ["RUNNEL_TOPIC"], key=f"k{i}", value=f"record-{i}",
                     headers=[("source", b"python")], on_delivery=delivered)
    producer.poll(0)
left = producer.flush(30)
if failures or left:
    print(f"produce_keyed: {len(failures)} failed, {left} undelivered: {failures[:3]}",
          file=sys.stderr)
    sys.exit(1)
