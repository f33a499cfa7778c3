#!/usr/bin/env node
// kafkajs 2.2.4 against a Runnel node, end to end.
//
// Environment: RUNNEL_BOOTSTRAP (host:port of the Kafka listener), RUNNEL_TOPIC (a name unused
// so far; this script creates and deletes it), and NODE_PATH pointing at the node_modules that
// scripts/install-test-clients prints.
//
// Steps: create the topic with 3 partitions (CreateTopics v3, then Metadata until every
// partition has a leader); produce keyed, unkeyed and null values with the codecs kafkajs has
// built in (none and gzip), with headers and explicit timestamps on some, every message to an
// explicit partition (kafkajs reports one base offset per partition, not per message, so the
// script must know where each message went); check each base offset; ListOffsets (earliest,
// latest, by timestamp); DescribeConfigs, AlterConfigs of retention.ms (kafkajs has no
// IncrementalAlterConfigs), DescribeConfigs again; DeleteTopics and check the topic left the
// metadata.
//
// With --consume the script also consumes (the kafkajs consumer always joins a group, so
// this step needs the group coordinator): everything from the beginning, checking
// every record against what was sent at its offset (key, value, headers, timestamp), which
// covers each partition's contents and each key's order.
//
// Exit 0 when everything matched. Otherwise one line on stderr, "kafkajs: <step>: <what
// differed>", and exit 1.

const { Kafka, CompressionTypes, ConfigResourceTypes, Partitioners, logLevel } = require('kafkajs')

const BOOTSTRAP = process.env.RUNNEL_BOOTSTRAP
const TOPIC = process.env.RUNNEL_TOPIC
const PARTITIONS = 3
const CODECS = { none: CompressionTypes.None, gzip: CompressionTypes.GZIP }
const MESSAGES_PER_CODEC = 12
const NEW_RETENTION_MS = '5400000'
const WHOLE_RUN_MS = 150000
const WAIT_MS = 30000

let currentStep = 'start'

function step(name) {
  currentStep = name
  console.log(`== ${name}`)
}

// A long value, cut short for a failure message.
function brief(text) {
  return text !== null && text.length > 30 ? `${text.slice(0, 30)}...` : text
}

function check(condition, whatDiffered) {
  if (!condition) throw new Error(whatDiffered)
}

// The messages one send carries: unique values, keys on most (each key bound to one
// partition), a null value, headers on even ones and an explicit (hour-old) timestamp on
// every fourth.
function plannedMessages(codec, codecIndex, baseMs) {
  const messages = []
  for (let i = 0; i < MESSAGES_PER_CODEC; i++) {
    const partition = i % PARTITIONS
    let key = i % 4 === 1 ? null : `key-${partition}`
    let value = `${codec} message ${i} ` + 'runnel '.repeat(40)
    if (i === 7) [key, value] = [`gone-${codec}`, null]
    const headers = i % 2 === 0 ? { index: String(i), codec } : undefined
    const timestamp = i % 4 === 0 ? String(baseMs + codecIndex * 100 + i) : undefined
    messages.push({ partition, key, value, headers, timestamp })
  }
  return messages
}

async function createTopic(admin) {
  step('create topic')
  const created = await admin.createTopics({
    topics: [{ topic: TOPIC, numPartitions: PARTITIONS }],
    waitForLeaders: true,
    timeout: 10000,
  })
  check(created, 'createTopics answered that the topic already exists')
  const { topics } = await admin.fetchTopicMetadata({ topics: [TOPIC] })
  check(topics.length === 1 && topics[0].partitions.length === PARTITIONS,
    `metadata does not show ${PARTITIONS} partitions: ${JSON.stringify(topics)}`)
}

// Sends each codec's messages in one request and returns them, in the order sent, each with
// the offset it must have: partitions start empty and kafkajs keeps a partition's order.
async function produceAll(kafka) {
  const sent = []
  const nextOffset = new Array(PARTITIONS).fill(0)
  const baseMs = (Math.floor(Date.now() / 1000) - 3600) * 1000
  const producer = kafka.producer({ createPartitioner: Partitioners.DefaultPartitioner })
  await producer.connect()
  for (const [codecIndex, [codec, compression]] of Object.entries(CODECS).entries()) {
    step(`produce with compression ${codec}`)
    const messages = plannedMessages(codec, codecIndex, baseMs)
    const firstOffset = [...nextOffset]
    for (const message of messages) {
      sent.push({ ...message, offset: nextOffset[message.partition]++ })
    }
    const results = await producer.send({ topic: TOPIC, compression, acks: -1, messages })
    for (const { partition, errorCode, baseOffset } of results) {
      const wanted = firstOffset[partition]
      check(errorCode === 0 && Number(baseOffset) === wanted,
        `partition ${partition}: error ${errorCode}, base offset ${baseOffset}, expected ${wanted}`)
    }
    check(results.length === PARTITIONS, `acknowledged partitions ${JSON.stringify(results)}`)
  }
  await producer.disconnect()
  return sent
}

async function checkListOffsets(admin, sent) {
  step('list offsets')
  const counts = new Array(PARTITIONS).fill(0)
  for (const message of sent) counts[message.partition]++
  for (const { partition, low, high } of await admin.fetchTopicOffsets(TOPIC)) {
    const wanted = counts[partition]
    check(Number(low) === 0 && Number(high) === wanted,
      `partition ${partition}: earliest ${low}, latest ${high}, expected 0 and ${wanted}`)
  }
  // A timestamp between the explicit ones; the implicit ones are "now", later than all of them.
  const target = Number(sent.find(m => m.timestamp !== undefined && m.offset > 0).timestamp)
  const atOrAfterTarget = m => m.timestamp === undefined || Number(m.timestamp) >= target
  for (const { partition, offset } of await admin.fetchTopicOffsetsByTimestamp(TOPIC, target)) {
    const candidates = sent.filter(m => m.partition === partition && atOrAfterTarget(m))
    const wanted = Math.min(...candidates.map(m => m.offset))
    check(Number(offset) === wanted,
      `partition ${partition}, timestamp ${target}: offset ${offset}, expected ${wanted}`)
  }
  // kafkajs answers the high watermark where the broker found no record (offset -1).
  const tomorrow = Date.now() + 86400000
  for (const { partition, offset } of await admin.fetchTopicOffsetsByTimestamp(TOPIC, tomorrow)) {
    const wanted = counts[partition]
    check(Number(offset) === wanted,
      `partition ${partition}, a timestamp after every record: offset ${offset}, expected ${wanted}`)
  }
}

async function consumeAll(kafka, sent, produceWindow) {
  step('consume from the beginning (consumer group)')
  const consumer = kafka.consumer({ groupId: `${TOPIC}-group` })
  await consumer.connect()
  await consumer.subscribe({ topics: [TOPIC], fromBeginning: true })
  const records = []
  await new Promise((resolve, reject) => {
    const tooLate = () => reject(new Error(`consumed ${records.length} of ${sent.length} in time`))
    const timer = setTimeout(tooLate, WAIT_MS)
    consumer.run({
      eachMessage: async ({ partition, message }) => {
        records.push({ partition, ...message })
        if (records.length === sent.length) {
          clearTimeout(timer)
          resolve()
        }
      },
    }).catch(reject)
  })
  await consumer.disconnect()

  step('compare consumed with sent')
  const text = buffer => (buffer === null ? null : buffer.toString())
  const headerText = headers =>
    JSON.stringify(Object.entries(headers || {}).map(([name, value]) => [name, `${value}`]).sort())
  const sentByOffset = new Map(sent.map(m => [`${m.partition}/${m.offset}`, m]))
  for (const record of records) {
    const where = `partition ${record.partition} offset ${record.offset}`
    const message = sentByOffset.get(`${record.partition}/${record.offset}`)
    check(message !== undefined, `${where}: consumed twice, or nothing was sent there`)
    const [key, value] = [text(record.key), text(record.value)]
    check(key === message.key && value === message.value,
      `${where}: key ${key}, value ${brief(value)}; sent ${message.key}, ${brief(message.value)}`)
    const [gotHeaders, sentHeaders] = [headerText(record.headers), headerText(message.headers)]
    check(gotHeaders === sentHeaders, `${where}: headers ${gotHeaders}, sent ${sentHeaders}`)
    const timestamp = Number(record.timestamp)
    check(message.timestamp !== undefined
      ? timestamp === Number(message.timestamp)
      : timestamp >= produceWindow[0] - 1000 && timestamp <= produceWindow[1] + 1000,
    `${where}: timestamp ${timestamp}, sent ${message.timestamp || 'none (the time of sending)'}`)
    sentByOffset.delete(`${record.partition}/${record.offset}`)
  }
  check(sentByOffset.size === 0, `never consumed: ${[...sentByOffset.keys()].join(', ')}`)
}

async function checkConfigs(admin) {
  step('describe and alter configs')
  const resource = { type: ConfigResourceTypes.TOPIC, name: TOPIC }
  const retention = async () => {
    const { resources } = await admin.describeConfigs({ resources: [resource] })
    const entry = resources[0].configEntries.find(e => e.configName === 'retention.ms')
    check(entry !== undefined, `retention.ms missing from ${JSON.stringify(resources)}`)
    return entry.configValue
  }
  await retention()
  const configEntries = [{ name: 'retention.ms', value: NEW_RETENTION_MS }]
  const { resources } = await admin.alterConfigs({ resources: [{ ...resource, configEntries }] })
  check(resources[0].errorCode === 0, `altering retention.ms answered ${JSON.stringify(resources)}`)
  const after = await retention()
  check(after === NEW_RETENTION_MS,
    `retention.ms is ${after} after setting it to ${NEW_RETENTION_MS}`)
}

async function deleteTopic(admin) {
  step('delete topic')
  await admin.deleteTopics({ topics: [TOPIC], timeout: 10000 })
  const deadline = Date.now() + WAIT_MS
  while ((await admin.listTopics()).includes(TOPIC)) {
    check(Date.now() < deadline, 'the topic is still in the metadata')
    await new Promise(resolve => setTimeout(resolve, 200))
  }
}

async function main() {
  check(BOOTSTRAP && TOPIC, 'RUNNEL_BOOTSTRAP and RUNNEL_TOPIC must be set')
  const kafka = new Kafka({
    clientId: 'runnel-kafkajs-test',
    brokers: [BOOTSTRAP],
    logLevel: logLevel.ERROR,
  })
  step('connect')
  const admin = kafka.admin()
  await admin.connect()
  await createTopic(admin)
  const startedMs = Date.now()
  const sent = await produceAll(kafka)
  if (process.argv.includes('--consume')) await consumeAll(kafka, sent, [startedMs, Date.now()])
  await checkListOffsets(admin, sent)
  await checkConfigs(admin)
  await deleteTopic(admin)
  await admin.disconnect()
}

setTimeout(() => {
  console.error(`kafkajs: ${currentStep}: no result after ${WHOLE_RUN_MS / 1000} s`)
  process.exit(1)
}, WHOLE_RUN_MS).unref()

main().then(
  () => {
    console.log('kafkajs: all checks passed')
    process.exit(0)
  },
  error => {
    const kind = error.name === 'Error' ? '' : `${error.name}: `
    console.error(`kafkajs: ${currentStep}: ${kind}${error.message}`)
    process.exit(1)
  },
)
