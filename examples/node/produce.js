#!/usr/bin/env node
// Produce one order-confirmation email event to Spillway from Node.js with kafkajs.
//
//   node produce.js [--avro] [EVENT_ID] [RECIPIENT]
//
// Environment: KAFKA_BOOTSTRAP (default 127.0.0.1:9092), TOPIC (default: the topic of the
// event's priority, email.raw-events.normal; the catch-all email.raw-events works too),
// SCHEMA_REGISTRY_URL (default http://127.0.0.1:8081/apis/ccompat/v7; --avro only).
// The contract is docs/producing.md. Exit code 0 once the broker has acknowledged (acks=all).
'use strict';

const fs = require('fs');
const path = require('path');
const { Kafka, Partitioners, logLevel } = require('kafkajs');

const args = process.argv.slice(2);
const avro = args.includes('--avro');
const [eventId = `node-${Date.now()}`, to = 'ada@example.com'] = args.filter((a) => a !== '--avro');
const bootstrap = process.env.KAFKA_BOOTSTRAP || '127.0.0.1:9092';
const registryUrl = process.env.SCHEMA_REGISTRY_URL || 'http://127.0.0.1:8081/apis/ccompat/v7';

// The event: plain JSON fields; template variables in `data` may nest freely.
const event = {
  event_id: eventId,
  template: 'order_confirmation',
  to,
  priority: 'normal',
  source: 'node-example',
  locale: 'de-AT', // falls back to the template's "de" variant
  created_at: Date.now(),
  data: {
    customer: { name: 'Ada Lovelace' },
    order: {
      id: 'SO-10482',
      currency: 'EUR',
      lines: [
        { sku: 'MUG-CER-350', name: 'Ceramic mug, 350 ml', qty: 2, unit_price: '12.50' },
        { sku: 'TEA-EG-100', name: 'Earl Grey loose leaf, 100 g', qty: 1, unit_price: '8.90' },
      ],
      total: '33.90',
      shipping_address: { name: 'Ada Lovelace', lines: ['12 Analytical Row', 'London'] },
      estimated_delivery: '2025-06-12',
    },
    shop: { name: 'Spillway Shop', url: 'https://shop.example' },
  },
};
// One topic per priority (docs/producing.md#priority-topics): a critical event never
// queues behind a burst of bulk.
const topic = process.env.TOPIC || `email.raw-events.${event.priority}`;

// Avro has no "any" type: each template variable travels as a JsonValue record {"v": ...}
// whose field is a union (null, boolean, long, double, string, array, map), nested freely.
// avsc names the union branch of a value explicitly ({"string": "Ada"}): long and double
// are both JS numbers, so it cannot guess.
function wrap(value) {
  if (value === null || value === undefined) return { v: null };
  if (Array.isArray(value)) return { v: { array: value.map(wrap) } };
  switch (typeof value) {
    case 'boolean': return { v: { boolean: value } };
    case 'number': return { v: Number.isInteger(value) ? { long: value } : { double: value } };
    case 'string': return { v: { string: value } };
    default:
      return { v: { map: Object.fromEntries(Object.entries(value).map(([k, x]) => [k, wrap(x)])) } };
  }
}

async function encodeAvro() {
  const { SchemaRegistry, SchemaType } = require('@kafkajs/confluent-schema-registry');
  const registry = new SchemaRegistry({ host: registryUrl });
  const schema = fs.readFileSync(path.join(__dirname, '..', '..', 'schemas', 'raw_event.avsc'), 'utf8');
  // Subject <topic>-value (TopicNameStrategy); an identical schema gets its existing id.
  const { id } = await registry.register({ type: SchemaType.AVRO, schema }, { subject: `${topic}-value` });
  const data = Object.fromEntries(Object.entries(event.data).map(([k, x]) => [k, wrap(x)]));
  return registry.encode(id, { ...event, data }); // Confluent framing: 0, schema id, Avro
}

async function main() {
  const kafka = new Kafka({ clientId: 'spillway-node-example', brokers: bootstrap.split(','), logLevel: logLevel.WARN });
  // DefaultPartitioner: murmur2 on the key, like the Java client and Faust.
  const producer = kafka.producer({ createPartitioner: Partitioners.DefaultPartitioner, idempotent: true });
  const value = avro ? await encodeAvro() : JSON.stringify(event);
  await producer.connect();
  try {
    // Key = event_id: Spillway's idempotency key.
    const [meta] = await producer.send({ topic, acks: -1, messages: [{ key: eventId, value }] });
    console.log(`${eventId} -> ${meta.topicName} partition ${meta.partition} offset ${meta.baseOffset} (${avro ? 'avro' : 'json'})`);
  } finally {
    await producer.disconnect();
  }
}

main().catch((err) => {
  console.error(`failed: ${err.message}`);
  process.exit(1);
});
