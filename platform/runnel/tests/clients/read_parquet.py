#!/usr/bin/env python3
"""Prints every record of the tiered segment files of one topic, read with pyarrow as a
data-lake reader would (a hive-style glob over the topic's directory): one JSON line per
record, in partition and offset order, {"partition", "offset", "timestamp", "key",
"value", "headers"} with keys and values as UTF-8 text (null for null) and timestamps in
milliseconds since the epoch.

Usage: read_parquet.py TOPIC_DIR
"""

import glob
import json
import os
import sys

import pyarrow.parquet as pq

topic_dir = sys.argv[1]
rows = []
for path in sorted(glob.glob(os.path.join(topic_dir, "partition=*", "*.parquet"))):
    partition = int(os.path.basename(os.path.dirname(path)).split("=", 1)[1])
    table = pq.read_table(path)
    if table.schema.metadata.get(b"runnel.schema.version") != b"1":
        print(f"read_parquet: {path} has no row layout version 1", file=sys.stderr)
        sys.exit(1)
    for row in table.to_pylist():
        text = lambda b: None if b is None else b.decode()
        rows.append({
            "partition": partition,
            "offset": row["offset"],
            "timestamp": int(row["timestamp"].timestamp() * 1000),
            "key": text(row["key"]),
            "value": text(row["value"]),
            "headers": [[h["key"], text(h["value"])] for h in row["headers"]],
        })
rows.sort(key=lambda r: (r["partition"], r["offset"]))
for row in rows:
    print(json.dumps(row))
