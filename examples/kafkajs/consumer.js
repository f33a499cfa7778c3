// Reads the topic "Usuarios" from the beginning as a member of the consumer group "teste"
// and prints each message as "partition N: NAME" on stdout (status goes to stderr).
// Runs until Ctrl-C, or with --exit-after N stops after N messages.
const { Kafka, logLevel } = require('kafkajs')

const brokers = (process.env.KAFKA_BROKERS || '127.0.0.1:9092').split(',')

function exitAfterFlag() {
  const index = process.argv.indexOf('--exit-after')
  if (index === -1) return undefined
  const count = Number(process.argv[index + 1])
  if (!Number.isInteger(count) || count < 1) throw new Error('usage: node consumer.js [--exit-after N]')
  return count
}

async function main() {
  const exitAfter = exitAfterFlag()
  const kafka = new Kafka({ clientId: 'runnel-example', brokers, logLevel: logLevel.WARN })
  const consumer = kafka.consumer({ groupId: 'teste' })
  await consumer.connect()
  await consumer.subscribe({ topics: ['Usuarios'], fromBeginning: true })

  let printed = 0
  let allPrinted
  const done = new Promise(resolve => {
    allPrinted = resolve
  })
  await consumer.run({
    eachMessage: async ({ partition, message }) => {
      if (exitAfter !== undefined && printed >= exitAfter) return
      console.log(`partition ${partition}: ${message.value}`)
      printed++
      if (printed === exitAfter) allPrinted()
    },
  })
  console.error('consumer running; Ctrl-C stops it')

  const stop = async () => {
    await consumer.disconnect()
    process.exit(0)
  }
  process.on('SIGINT', stop)
  process.on('SIGTERM', stop)
  // Disconnecting from inside eachMessage would wait for eachMessage itself: stop from here.
  if (exitAfter !== undefined) {
    await done
    await stop()
  }
}

main().catch(error => {
  console.error(`consumer.js: ${error.message}`)
  process.exit(1)
})
