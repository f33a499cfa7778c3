// The seed's scenario with kafkajs against a Runnel node: two consumers in group "teste" on
// topic "Usuarios" (2 partitions) each receive exactly one partition; when one leaves, the
// other receives both; a consumer restarted in the group resumes from its committed offset,
// with nothing skipped and nothing read twice.
//
// Environment: RUNNEL_BOOTSTRAP (host:port). Needs NODE_PATH to find kafkajs. Exits 0 when
// everything held, else prints one line saying what differed and exits 1.
const { Kafka, Partitioners, logLevel } = require('kafkajs')

const kafka = new Kafka({
  clientId: 'runnel-groups-test',
  brokers: [process.env.RUNNEL_BOOTSTRAP],
  logLevel: logLevel.NOTHING,
})
const TOPIC = 'Usuarios'
const GROUP = 'teste'
const WAIT_MS = 60000

function step(name) {
  console.log(`== ${name}`)
}

async function waitFor(condition, what) {
  const deadline = Date.now() + WAIT_MS
  while (!condition()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting: ${what}`)
    await new Promise(resolve => setTimeout(resolve, 50))
  }
}

// A consumer in the group that records what it receives and what it was assigned.
async function member(name, received) {
  const consumer = kafka.consumer({ groupId: GROUP, sessionTimeout: 10000, heartbeatInterval: 500 })
  const state = { name, consumer, assigned: [] }
  consumer.on(consumer.events.GROUP_JOIN, event => {
    const assignment = event.payload.memberAssignment[TOPIC] || []
    state.assigned = [...assignment].sort()
  })
  await consumer.connect()
  await consumer.subscribe({ topics: [TOPIC], fromBeginning: true })
  await consumer.run({
    eachMessage: async ({ partition, message }) => {
      received.push({ partition, value: message.value.toString() })
    },
  })
  return state
}

async function send(producer, names) {
  for (const name of names) {
    const first = name.charAt(0).toUpperCase()
    await producer.send({ topic: TOPIC, messages: [{ value: name, partition: first <= 'M' ? 0 : 1 }] })
  }
}

async function main() {
  const admin = kafka.admin()
  await admin.connect()
  await admin.createTopics({ topics: [{ topic: TOPIC, numPartitions: 2 }], waitForLeaders: true })
  await admin.disconnect()
  const producer = kafka.producer({ createPartitioner: Partitioners.DefaultPartitioner })
  await producer.connect()
  const received = []

  step('two consumers share the two partitions')
  await send(producer, ['Ana', 'Pedro', 'Maria', 'Zeca'])
  const a = await member('a', received)
  const b = await member('b', received)
  await waitFor(() => a.assigned.length === 1 && b.assigned.length === 1 && a.assigned[0] !== b.assigned[0] &&
    received.length >= 4, 'one partition each')

  step('one leaves and the other receives both')
  await b.consumer.disconnect()
  await waitFor(() => a.assigned.length === 2, 'the remaining consumer owns both partitions')
  await send(producer, ['Bruno', 'Olga'])
  await waitFor(() => received.length >= 6, 'the records sent after the rebalance')
  await a.consumer.disconnect()

  step('a restarted consumer resumes from the committed offsets')
  await send(producer, ['Carla', 'Rui'])
  const c = await member('c', received)
  await waitFor(() => received.length >= 8, 'the records sent while nobody consumed')
  await new Promise(resolve => setTimeout(resolve, 1500))
  await c.consumer.disconnect()
  await producer.disconnect()

  const got = received.map(r => r.value).sort()
  const want = ['Ana', 'Pedro', 'Maria', 'Zeca', 'Bruno', 'Olga', 'Carla', 'Rui'].sort()
  if (JSON.stringify(got) !== JSON.stringify(want)) {
    throw new Error(`received ${JSON.stringify(got)}, expected each of ${JSON.stringify(want)} once`)
  }
  for (const { partition, value } of received) {
    const expected = value.charAt(0).toUpperCase() <= 'M' ? 0 : 1
    if (partition !== expected) throw new Error(`${value} came from partition ${partition}`)
  }
  console.log('kafkajs groups: all checks passed')
}

main().catch(error => {
  console.log(`kafkajs groups: ${error.message}`)
  process.exit(1)
})
