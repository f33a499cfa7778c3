// Creates the topic "Usuarios" with 2 partitions. Running it again is fine: an existing
// topic is left as it is.
const { Kafka, logLevel } = require('kafkajs')

const brokers = (process.env.KAFKA_BROKERS || '127.0.0.1:9092').split(',')

async function main() {
  const kafka = new Kafka({ clientId: 'runnel-example', brokers, logLevel: logLevel.WARN })
  const admin = kafka.admin()
  await admin.connect()
  // Asking first keeps kafkajs from logging TOPIC_ALREADY_EXISTS as an error on a second run.
  if ((await admin.listTopics()).includes('Usuarios')) {
    console.log('topic Usuarios already exists')
  } else {
    const created = await admin.createTopics({ topics: [{ topic: 'Usuarios', numPartitions: 2 }] })
    console.log(created ? 'created topic Usuarios with 2 partitions' : 'topic Usuarios already exists')
  }
  await admin.disconnect()
}

main().catch(error => {
  console.error(`topic.js: ${error.message}`)
  process.exit(1)
})
