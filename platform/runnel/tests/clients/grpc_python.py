"""A Python gRPC client generated from nothing but schemas/proto, against a Runnel node.

Environment: RUNNEL_GRPC (host:port of the gRPC API), RUNNEL_BOOTSTRAP (the Kafka
listener), RUNNEL_TOPIC (a prefix for new topic names), RUNNEL_PROTO_DIR (schemas/proto).

Generates the client with grpcio-tools, then: creates a topic, produces keyed records
with headers and timestamps, fetches them back; confluent-kafka reads the same records at
the same offsets; records confluent-kafka produced with Kafka's default partitioner
(murmur2) are found by gRPC where Kafka put them, and gRPC puts the same keys in the same
partitions; a stream of produce requests is answered in order; an unknown topic is
NOT_FOUND. Exits 0 when all of that held, else prints one line saying what differed and
exits 1.
"""

import os
import sys
import tempfile

import grpc
from grpc_tools import protoc

GRPC = os.environ["RUNNEL_GRPC"]
BOOTSTRAP = os.environ["RUNNEL_BOOTSTRAP"]
PREFIX = os.environ["RUNNEL_TOPIC"]
PROTO_DIR = os.environ["RUNNEL_PROTO_DIR"]


def fail(message):
    print(f"grpc python: {message}")
    sys.exit(1)


def generate():
    out = tempfile.mkdtemp(prefix="runnel-grpc-python-")
    files = [f"runnel/v1/{name}.proto" for name in ("records", "producer", "consumer", "admin")]
    code = protoc.main(["protoc", f"-I{PROTO_DIR}", f"--python_out={out}",
                        f"--grpc_python_out={out}", *files])
    if code != 0:
        fail(f"grpc_tools.protoc exited {code}")
    sys.path.insert(0, out)


generate()
from runnel.v1 import admin_pb2, admin_pb2_grpc  # noqa: E402
from runnel.v1 import consumer_pb2, consumer_pb2_grpc  # noqa: E402
from runnel.v1 import producer_pb2, producer_pb2_grpc  # noqa: E402
from runnel.v1 import records_pb2  # noqa: E402

from confluent_kafka import Consumer, Producer, TopicPartition  # noqa: E402

channel = grpc.insecure_channel(GRPC)
admin = admin_pb2_grpc.AdminStub(channel)
producer = producer_pb2_grpc.ProducerStub(channel)
consumer = consumer_pb2_grpc.ConsumerStub(channel)


def fetch_all(topic, partitions):
    """Every record of the topic through gRPC: {(partition, offset): record}."""
    found = {}
    for partition in range(partitions):
        offset = 0
        while True:
            answer = consumer.Fetch(consumer_pb2.FetchRequest(
                topic=topic, partition=partition, offset=offset), timeout=30)
            for r in answer.records:
                found[(r.partition, r.offset)] = r
            if answer.next_offset >= answer.high_watermark:
                break
            offset = answer.next_offset
    return found


def grpc_to_kafka():
    topic = f"{PREFIX}-from-grpc"
    admin.CreateTopic(admin_pb2.CreateTopicRequest(name=topic, partitions=3), timeout=30)
    records = [records_pb2.Record(
        key=f"user-{i % 5}".encode(), value=f"value {i}".encode(),
        headers=[records_pb2.Header(key="origin", value=b"python")],
        timestamp_ms=1_700_000_000_000 + i) for i in range(30)]
    answer = producer.Produce(producer_pb2.ProduceRequest(topic=topic, records=records,
                                                          request_id=3), timeout=30)
    if answer.request_id != 3 or len(answer.positions) != 30:
        fail(f"unexpected produce answer {answer}")
    fetched = fetch_all(topic, 3)
    for record, position in zip(records, answer.positions):
        got = fetched.get((position.partition, position.offset))
        if got is None or (got.key, got.value, got.timestamp_ms) != (
                record.key, record.value, record.timestamp_ms):
            fail(f"gRPC fetched {got} at {position}, not {record}")
        if [(h.key, h.value) for h in got.headers] != [("origin", b"python")]:
            fail(f"headers {got.headers}")

    c = Consumer({"bootstrap.servers": BOOTSTRAP, "group.id": f"{PREFIX}-reader",
                  "enable.auto.commit": False})
    c.assign([TopicPartition(topic, p, 0) for p in range(3)])
    seen = {}
    while len(seen) < 30:
        message = c.poll(10)
        if message is None:
            fail(f"confluent-kafka read {len(seen)} of 30 records")
        if message.error():
            continue
        seen[(message.partition(), message.offset())] = message
    c.close()
    for (partition, offset), message in seen.items():
        got = fetched[(partition, offset)]
        if (message.key(), message.value(), message.timestamp()[1]) != (
                got.key, got.value, got.timestamp_ms):
            fail(f"Kafka read {message.key()}/{message.value()} at {partition}/{offset}")
        if message.headers() != [("origin", b"python")]:
            fail(f"Kafka headers {message.headers()}")


def kafka_to_grpc():
    topic = f"{PREFIX}-from-kafka"
    admin.CreateTopic(admin_pb2.CreateTopicRequest(name=topic, partitions=4), timeout=30)
    # murmur2_random is Kafka's default partitioner (the Java client's) for keyed records.
    p = Producer({"bootstrap.servers": BOOTSTRAP, "partitioner": "murmur2_random"})
    delivered = {}

    def report(error, message):
        if error is None:
            delivered[message.key()] = (message.partition(), message.offset())

    for i in range(20):
        p.produce(topic, key=f"key-{i}".encode(), value=f"v{i}".encode(),
                  headers=[("n", str(i).encode())], on_delivery=report)
    if p.flush(30) != 0 or len(delivered) != 20:
        fail(f"confluent-kafka delivered {len(delivered)} of 20")
    fetched = fetch_all(topic, 4)
    for key, place in delivered.items():
        got = fetched.get(place)
        if got is None or got.key != key:
            fail(f"gRPC did not find {key} at {place}")
    # The same keys through gRPC go to the partitions Kafka's partitioner chose.
    again = producer.Produce(producer_pb2.ProduceRequest(
        topic=topic, records=[records_pb2.Record(key=k, value=b"again") for k in delivered]),
        timeout=30)
    for key, position in zip(delivered, again.positions):
        if position.partition != delivered[key][0]:
            fail(f"gRPC put {key} in partition {position.partition}, Kafka in {delivered[key][0]}")


def stream_and_errors():
    topic = f"{PREFIX}-stream"
    requests = (producer_pb2.ProduceRequest(
        topic=topic, partition=0, request_id=i,
        records=[records_pb2.Record(value=f"s{i}".encode())]) for i in range(20))
    admin.CreateTopic(admin_pb2.CreateTopicRequest(name=topic, partitions=1), timeout=30)
    ids = [(a.request_id, a.positions[0].offset) for a in producer.ProduceStream(requests)]
    if ids != [(i, i) for i in range(20)]:
        fail(f"stream answers {ids}")
    try:
        consumer.Fetch(consumer_pb2.FetchRequest(topic=f"{PREFIX}-missing"), timeout=30)
        fail("a fetch from an unknown topic succeeded")
    except grpc.RpcError as error:
        if error.code() != grpc.StatusCode.NOT_FOUND or not error.details():
            fail(f"unknown topic: {error.code()} {error.details()!r}")


def main():
    grpc_to_kafka()
    kafka_to_grpc()
    stream_and_errors()
    print("grpc python: all checks passed")


if __name__ == "__main__":
    main()
