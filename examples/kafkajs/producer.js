// Sends one name to the topic "Usuarios": names starting with A to M go to partition 0,
// N to Z to partition 1 (either case). Usage: node producer.js NAME
const { Kafka, Partitioners, logLevel } = require('kafkajs')

const brokers = (process.env.KAFKA_BROKERS || '127.0.0.1:9092').split(',')

// The partition for a name, or undefined when it does not start with a letter A-Z.
function partitionFor(name) {
  const first = name.charAt(0).toUpperCase()
  if (first >= 'A' && first <= 'M') return 0
  if (first >= 'N' && first <= 'Z') return 1
  return undefined
}

async function main() {
  const name = process.argv[2]
  if (!name) throw new Error('usage: node producer.js NAME')
  const partition = partitionFor(name)
  if (partition === undefined) throw new Error(`"${name}" does not start with a letter from A to Z`)

  const kafka = new Kafka({ clientId: 'runnel-example', brokers, logLevel: logLevel.WARN })
  // Every message names its partition, so the partitioner is never asked; choosing one
  // explicitly only silences kafkajs's warning about its v2 default.
  const producer = kafka.producer({ createPartitioner: Partitioners.DefaultPartitioner })
  await producer.connect()
  const [result] = await producer.send({
    topic: 'Usuarios',
    messages: [{ value: name, partition }],
  })
  console.log(`sent ${name} to partition ${result.partition} at offset ${result.baseOffset}`)
  await producer.disconnect()
}

main().catch(error => {
  console.error(`producer.js: ${error.message}`)
  process.exit(1)
})
