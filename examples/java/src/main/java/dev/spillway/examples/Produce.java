package dev.spillway.examples;

import com.fasterxml.jackson.databind.ObjectMapper;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.Properties;
import org.apache.kafka.clients.producer.KafkaProducer;
import org.apache.kafka.clients.producer.ProducerConfig;
import org.apache.kafka.clients.producer.ProducerRecord;
import org.apache.kafka.clients.producer.RecordMetadata;
import org.apache.kafka.common.serialization.ByteArraySerializer;
import org.apache.kafka.common.serialization.StringSerializer;

/**
 * Produces one newsletter email event to Spillway as a JSON object (docs/producing.md).
 *
 * <p>Key = the event id (Spillway's idempotency key); value = UTF-8 JSON; acks=all, so the
 * program exits 0 only once the broker has the event.
 */
public final class Produce {
  private Produce() {}

  public static void main(String[] args) throws Exception {
    String eventId = args.length > 0 ? args[0] : "java-" + System.currentTimeMillis();
    String to = args.length > 1 ? args[1] : "katherine@example.com";
    String bootstrap = System.getenv().getOrDefault("KAFKA_BOOTSTRAP", "127.0.0.1:9092");

    Map<String, Object> data = new LinkedHashMap<>();
    data.put("subscriber", Map.of("name", "Katherine Johnson"));
    data.put("issue", Map.of(
        "title", "The Tea Room, issue 42: autumn blends",
        "intro", "Warming blends and the cups to drink them from.",
        "articles", List.of(Map.of(
            "title", "Five autumn blends worth brewing",
            "url", "https://shop.example/journal/autumn-blends",
            "summary", "Our tasting panel picks the teas for chilly evenings."))));
    data.put("unsubscribe_url", "https://shop.example/newsletter/unsubscribe?s=8c1e0f");
    data.put("shop", Map.of("name", "Spillway Shop", "url", "https://shop.example"));

    Map<String, Object> event = new LinkedHashMap<>();
    event.put("event_id", eventId);
    event.put("template", "newsletter");
    event.put("to", to);
    event.put("priority", "bulk");
    event.put("source", "java-example");
    event.put("created_at", System.currentTimeMillis());
    event.put("data", data);
    // One topic per priority (docs/producing.md#priority-topics); email.raw-events, the
    // catch-all, is read at normal priority.
    String topic = System.getenv().getOrDefault("TOPIC", "email.raw-events." + event.get("priority"));
    byte[] value = new ObjectMapper().writeValueAsBytes(event);

    Properties props = new Properties();
    props.put(ProducerConfig.BOOTSTRAP_SERVERS_CONFIG, bootstrap);
    props.put(ProducerConfig.ACKS_CONFIG, "all");
    props.put(ProducerConfig.ENABLE_IDEMPOTENCE_CONFIG, true);
    props.put(ProducerConfig.DELIVERY_TIMEOUT_MS_CONFIG, 60_000);
    props.put(ProducerConfig.KEY_SERIALIZER_CLASS_CONFIG, StringSerializer.class);
    props.put(ProducerConfig.VALUE_SERIALIZER_CLASS_CONFIG, ByteArraySerializer.class);
    // SASL/TLS clusters: add security.protocol, sasl.mechanism, sasl.jaas.config here.

    try (KafkaProducer<String, byte[]> producer = new KafkaProducer<>(props)) {
      RecordMetadata meta = producer.send(new ProducerRecord<>(topic, eventId, value)).get();
      System.out.printf("%s -> %s partition %d offset %d (json)%n",
          eventId, meta.topic(), meta.partition(), meta.offset());
    }
  }
}
