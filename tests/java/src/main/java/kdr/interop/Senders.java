package kdr.interop;

import static java.nio.charset.StandardCharsets.UTF_8;

import java.util.HashMap;
import java.util.List;
import java.util.Map;
import java.util.Properties;
import java.util.Random;
import org.apache.kafka.clients.producer.KafkaProducer;
import org.apache.kafka.clients.producer.ProducerRecord;
import org.apache.kafka.common.serialization.ByteArraySerializer;
import org.apache.kafka.common.serialization.StringSerializer;

/**
 * Produces every delayed record of the run with plain {@code KafkaProducer}s: the README's
 * snippets over each tier and target, then the edge cases (two {@code delay-target} headers,
 * binary keys and values, a tombstone, an empty value, no key); then one control record per
 * target and key, sent straight to the target, to learn the Java producer's own partition.
 */
final class Senders {
  private final String bootstrap;
  private final List<Tier> tiers;
  private final List<String> targets;
  private final Ledger ledger;
  private final ReadmeSnippets snippets;
  private final Random random = new Random(42);

  Senders(String bootstrap, List<Tier> tiers, String cancelTopic, List<String> targets, Ledger l) {
    this.bootstrap = bootstrap;
    this.tiers = tiers;
    this.targets = targets;
    this.ledger = l;
    this.snippets = new ReadmeSnippets(bootstrap, tiers, cancelTopic, l);
  }

  /** The key of {@link #produceAll}'s answer for a target and key. */
  static String controlKey(String target, byte[] key) {
    return target + "/" + Bytes.hex(key);
  }

  /**
   * Produces everything, booked in the ledger; returns the partition the Java producer put each
   * control record in, by {@link #controlKey}.
   */
  Map<String, Integer> produceAll() throws Exception {
    Map<String, Integer> controlPartition = new HashMap<>();
    try (KafkaProducer<String, String> producer =
            new KafkaProducer<>(producerProps(StringSerializer.class));
        KafkaProducer<byte[], byte[]> binary =
            new KafkaProducer<>(producerProps(ByteArraySerializer.class))) {
      delayed(producer, binary);
      // The cross-check: the Java producer's own partitioner, asked through a
      // control record with the same key sent straight to the target.
      for (Sent s : ledger.sent) {
        if (s.key == null) {
          continue;
        }
        String k = controlKey(s.target, s.key);
        if (!controlPartition.containsKey(k)) {
          ProducerRecord<byte[], byte[]> c =
              new ProducerRecord<>(s.target, s.key, "control".getBytes(UTF_8));
          c.headers().add(Ledger.CONTROL, ledger.run.getBytes(UTF_8));
          controlPartition.put(k, binary.send(c).get().partition());
        }
      }
    }
    return controlPartition;
  }

  /** The delayed records: the README's snippets plus binary and edge cases. */
  private void delayed(KafkaProducer<String, String> producer, KafkaProducer<byte[], byte[]> binary)
      throws Exception {
    String wide = targets.get(0);
    String other = targets.get(targets.size() - 1);
    String[] keys = {
      "order-1", "order-2", "order-3", "order-4", "order-5", "order-6", "客户-7", "ключ 🔑 8", ""
    };
    int k = 0;
    // A fixed delay: due at the record timestamp plus the tier's delay.
    for (Tier tier : tiers) {
      for (int i = 0; i < 4; i++) {
        String target = i == 3 ? other : wide;
        snippets.fixedDelay(producer, tier, target, keys[k++ % keys.length], "fixed");
      }
    }
    // An absolute time, through the cascade: the largest tier not longer than the delay.
    long longest = tiers.get(tiers.size() - 1).delayMs();
    long shortest = tiers.get(0).delayMs();
    long[] delays = {
      shortest + 500, tiers.get(1).delayMs() + 700, longest + 300, longest + shortest + 600,
      longest + tiers.get(1).delayMs() + shortest + 300
    };
    for (int i = 0; i < delays.length; i++) {
      snippets.deliverAt(producer, i % 2 == 0 ? wide : other, keys[k++ % keys.length], delays[i]);
    }
    // One with an id, cancelled right away; one with an id never cancelled.
    snippets.cancelSnippet(wide);
    twoTargets(producer, wide);
    // Binary keys and values from a byte[] producer: random bytes (not UTF-8), a
    // large value, a null value (tombstone), an empty value, no key at all.
    binaryRecord(binary, tiers.get(0), wide, bytes(8 + random.nextInt(24)), bytes(300));
    binaryRecord(binary, tiers.get(1), wide, bytes(16), bytes(100_000));
    binaryRecord(binary, tiers.get(tiers.size() - 1), wide, bytes(5), null);
    binaryRecord(binary, tiers.get(0), other, bytes(12), new byte[0]);
    binaryRecord(binary, tiers.get(1), wide, null, bytes(64));
  }

  /** Two {@code delay-target} headers: the last one counts (as Java's Headers.lastHeader). */
  private void twoTargets(KafkaProducer<String, String> producer, String wide) throws Exception {
    Tier tier = tiers.get(1);
    ProducerRecord<String, String> r =
        new ProducerRecord<>(tier.topic(), "order-1", ledger.payload("two targets"));
    r.headers()
        .add("delay-target", "no-such-topic-interop".getBytes(UTF_8))
        .add("delay-target", wide.getBytes(UTF_8));
    ledger.extras(r.headers(), true);
    ledger.book(producer.send(r).get(), "two-targets", tier, wide, r);
  }

  /** A fixed delay from the byte[] producer; the kind names what is unusual about it. */
  private void binaryRecord(
      KafkaProducer<byte[], byte[]> binary, Tier tier, String target, byte[] key, byte[] value)
      throws Exception {
    ProducerRecord<byte[], byte[]> r = new ProducerRecord<>(tier.topic(), key, value);
    r.headers().add("delay-target", target.getBytes(UTF_8));
    ledger.extras(r.headers(), true);
    String kind =
        "binary"
            + (key == null ? "-keyless" : "")
            + (value == null ? "-null-value" : value.length == 0 ? "-empty-value" : "")
            + (value != null && value.length > 10_000 ? "-large" : "");
    ledger.book(binary.send(r).get(), kind, tier, target, r);
  }

  /** {@code n} random bytes (seeded: the same every run), never valid UTF-8 if longer than 2. */
  private byte[] bytes(int n) {
    byte[] b = new byte[n];
    random.nextBytes(b);
    if (n > 2) {
      b[0] = (byte) 0xff; // never valid UTF-8
      b[1] = 0;
    }
    return b;
  }

  private Properties producerProps(Class<?> serializer) {
    Properties props = new Properties();
    props.put("bootstrap.servers", bootstrap);
    props.put("acks", "all");
    props.put("key.serializer", serializer.getName());
    props.put("value.serializer", serializer.getName());
    return props;
  }
}
