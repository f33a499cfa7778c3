#!/usr/bin/env python3
"""Deletes the records of partition 0 of RUNNEL_TOPIC on RUNNEL_BOOTSTRAP below OFFSET with
confluent-kafka's AdminClient (Kafka's DeleteRecords), and prints the partition's new low
watermark. Exit 1 with the error on stderr if the broker refused.

Usage: delete_records.py OFFSET
"""

import os
import sys

from confluent_kafka import TopicPartition
from confluent_kafka.admin import AdminClient

offset = int(sys.argv[1])
admin = AdminClient({"bootstrap.servers": os.environ["RUNNEL_BOOTSTRAP"]})
futures = admin.delete_records([TopicPartition(os.environ["RUNNEL_TOPIC"], 0, offset)])
for partition, future in futures.items():
    try:
        result = future.result(timeout=30)
    except Exception as error:  # the broker's refusal, as the client reports it
        print(f"delete_records: {error}", file=sys.stderr)
        sys.exit(1)
    print(result.low_watermark)
