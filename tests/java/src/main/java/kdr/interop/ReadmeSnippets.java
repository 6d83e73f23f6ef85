package kdr.interop;

import static java.nio.charset.StandardCharsets.UTF_8;

import java.nio.charset.StandardCharsets;
import java.time.Instant;
import java.util.List;
import java.util.Properties;
import org.apache.kafka.clients.producer.KafkaProducer;
import org.apache.kafka.clients.producer.ProducerRecord;
import org.apache.kafka.clients.producer.RecordMetadata;
import org.apache.kafka.common.serialization.StringSerializer;

/**
 * The Java snippets of README.md and docs/cancellation.md, run with the test's topics: a fixed
 * delay with {@code delay-target} only (as kcat writes it), an absolute {@code delay-deliver-at}
 * ("Producing from other languages") and an id cancelled on the cancel topic ("Cancelling and
 * rescheduling"). Each adds
 * the test's own headers and books what it sent in the {@link Ledger}.
 */
final class ReadmeSnippets {
  private final String bootstrap;
  private final List<Tier> tiers;
  private final String cancelTopic;
  private final Ledger ledger;

  ReadmeSnippets(String bootstrap, List<Tier> tiers, String cancelTopic, Ledger ledger) {
    this.bootstrap = bootstrap;
    this.tiers = tiers;
    this.cancelTopic = cancelTopic;
    this.ledger = ledger;
  }

  /** The README's fixed delay, as kcat writes it: {@code delay-target} only. */
  void fixedDelay(
      KafkaProducer<String, String> producer, Tier tier, String target, String key, String kind)
      throws Exception {
    ProducerRecord<String, String> r =
        new ProducerRecord<>(tier.topic(), key, ledger.payload(kind));
    r.headers().add("delay-target", target.getBytes(StandardCharsets.UTF_8));
    ledger.extras(r.headers(), ledger.seq() % 3 == 0);
    ledger.book(producer.send(r).get(), kind, tier, target, r);
  }

  /** The README's Java snippet of "Producing from other languages". */
  void deliverAt(KafkaProducer<String, String> producer, String target, String key, long delayMs)
      throws Exception {
    String payload = ledger.payload("deliver-at");
    Tier tier = Tier.largestNotLonger(tiers, delayMs);
    long deliverAt = Instant.now().plusMillis(delayMs).toEpochMilli();
    ProducerRecord<String, String> r = new ProducerRecord<>(tier.topic(), key, payload);
    r.headers().add("delay-target", target.getBytes(StandardCharsets.UTF_8));
    r.headers()
        .add("delay-deliver-at", Long.toString(deliverAt).getBytes(StandardCharsets.US_ASCII));
    ledger.extras(r.headers(), ledger.seq() % 2 == 0);
    RecordMetadata md = producer.send(r).get();
    ledger.book(md, "deliver-at+" + delayMs, tier, target, r, deliverAt);
  }

  /**
   * The Java snippet of docs/cancellation.md, "Cancelling and rescheduling" (with the test's
   * topics and a unique id), plus a record with another id that is never cancelled. A cancellation
   * acknowledged only after the record's due time is a failure: the guarantee does not cover it.
   */
  void cancelSnippet(String target) throws Exception {
    Tier tier = tiers.get(tiers.size() - 1);
    String id = "order-42-" + ledger.run;
    String kept = "order-43-" + ledger.run;
    Properties props = new Properties();
    props.put("bootstrap.servers", bootstrap);
    props.put("acks", "all");
    props.put("key.serializer", StringSerializer.class.getName());
    props.put("value.serializer", StringSerializer.class.getName());
    try (KafkaProducer<String, String> p = new KafkaProducer<>(props)) {
      ProducerRecord<String, String> r = new ProducerRecord<>(tier.topic(), id, "pay order 42");
      r.headers().add("delay-target", target.getBytes(UTF_8)).add("delay-id", id.getBytes(UTF_8));
      ledger.extras(r.headers(), true);
      Sent cancelled = ledger.book(p.send(r).get(), "cancelled", tier, target, r);
      cancelled.cancelled = true;
      ProducerRecord<String, String> c = new ProducerRecord<>(cancelTopic, id, "cancel");
      c.headers()
          .add(
              "delay-cancel-until",
              Long.toString(System.currentTimeMillis() + 86_400_000L).getBytes(UTF_8));
      RecordMetadata cmd = p.send(c).get(); // acknowledged: records with the id due after now are never delivered
      long acked = System.currentTimeMillis();
      System.out.printf(
          "cancelled %s on %s p%d@%d, acknowledged %d ms before the record's due time%n",
          id, cmd.topic(), cmd.partition(), cmd.offset(), cancelled.dueMs - acked);
      if (acked >= cancelled.dueMs) {
        ledger.fail(
            cancelled.seq,
            "the cancellation was acknowledged "
                + (acked - cancelled.dueMs)
                + " ms after the record's due time: the guarantee does not cover it (machine too"
                + " slow?)");
      }
      ProducerRecord<String, String> n = new ProducerRecord<>(tier.topic(), kept, "pay order 43");
      n.headers().add("delay-target", target.getBytes(UTF_8)).add("delay-id", kept.getBytes(UTF_8));
      ledger.extras(n.headers(), false);
      ledger.book(p.send(n).get(), "id-kept", tier, target, n);
    }
  }
}
