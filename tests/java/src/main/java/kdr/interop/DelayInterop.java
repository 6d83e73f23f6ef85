package kdr.interop;

import static java.nio.charset.StandardCharsets.UTF_8;

import java.nio.charset.StandardCharsets;
import java.time.Duration;
import java.time.Instant;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.Comparator;
import java.util.HashMap;
import java.util.HashSet;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.Properties;
import java.util.Random;
import java.util.Set;
import java.util.TreeSet;
import java.util.concurrent.ConcurrentLinkedQueue;
import java.util.concurrent.atomic.AtomicBoolean;
import java.util.concurrent.atomic.AtomicReference;
import org.apache.kafka.clients.consumer.ConsumerRecord;
import org.apache.kafka.clients.consumer.KafkaConsumer;
import org.apache.kafka.clients.producer.KafkaProducer;
import org.apache.kafka.clients.producer.ProducerRecord;
import org.apache.kafka.clients.producer.RecordMetadata;
import org.apache.kafka.common.TopicPartition;
import org.apache.kafka.common.header.Header;
import org.apache.kafka.common.header.Headers;
import org.apache.kafka.common.serialization.ByteArrayDeserializer;
import org.apache.kafka.common.serialization.ByteArraySerializer;
import org.apache.kafka.common.serialization.StringSerializer;
import org.apache.kafka.common.utils.Utils;

/**
 * The Java client through kafka-delay-router, for real: a plain {@code KafkaProducer} writes
 * delayed records to the tier topics with the README's Java snippets (a fixed tier with {@code
 * delay-target}; an absolute {@code delay-deliver-at}; a {@code delay-id} and its cancellation
 * on the cancel topic with {@code delay-cancel-until}; a {@code delay-id} never cancelled), with
 * extra headers of its own and binary keys and values; a plain {@code KafkaConsumer}, assigned
 * and positioned at the targets' ends before the first record is produced, stamps each arrival.
 *
 * <p>Checks: every record not cancelled arrives exactly once, not before its due time (record
 * timestamp plus the tier's delay, or {@code delay-deliver-at}) and at most {@code
 * --max-late-ms} after it; key, value and every original header (order, duplicates, null and
 * empty values) arrive byte for byte, the only extra being {@code delay-original-timestamp}
 * holding the send timestamp; the partition is the one the Java producer's default partitioner
 * picks for the key on the target ({@code toPositive(murmur2(key)) % partitions}, cross-checked
 * by sending a control record with the key straight to the target); the cancelled record never
 * arrives. Prints every record and one summary line; exits 1 if a check failed, 2 on bad usage.
 *
 * <p>Usage: {@code DelayInterop --bootstrap-servers HOST:PORT --tier TOPIC=DELAY_MS ...
 * --cancel-topic TOPIC --target TOPIC [--target TOPIC ...] [--max-late-ms 1000]
 * [--cancel-margin-ms 2000]}. At least two tiers; the first target should have several
 * partitions (most records go there).
 */
public final class DelayInterop {

  /** A tier topic and its fixed delay. */
  record Tier(String topic, long delayMs) {}

  /** A header as sent or received: key and value bytes (null for a null value). */
  record Hdr(String key, byte[] value) {
    @Override
    public String toString() {
      return key + "=" + show(value);
    }
  }

  /** A record the consumer saw, with the time it arrived. */
  record Arrival(
      String topic,
      int partition,
      long offset,
      byte[] key,
      byte[] value,
      List<Hdr> headers,
      long timestampMs,
      long arrivedMs) {}

  /** A delayed record as produced, with what is expected of its delivery. */
  static final class Sent {
    final String seq;
    final String kind;
    final String tier;
    final String target;
    final byte[] key;
    final byte[] value;
    final List<Hdr> headers;
    final long timestampMs;
    final long dueMs;
    boolean cancelled;

    Sent(
        String seq,
        String kind,
        String tier,
        String target,
        byte[] key,
        byte[] value,
        Headers headers,
        long timestampMs,
        long dueMs) {
      this.seq = seq;
      this.kind = kind;
      this.tier = tier;
      this.target = target;
      this.key = key;
      this.value = value;
      this.headers = list(headers);
      this.timestampMs = timestampMs;
      this.dueMs = dueMs;
    }
  }

  static final String SEQ = "interop-seq";
  static final String CONTROL = "interop-control";
  static final String ORIGINAL_TIMESTAMP = "delay-original-timestamp";

  final String bootstrap;
  final List<Tier> tiers;
  final String cancelTopic;
  final List<String> targets;
  final long maxLateMs;
  final long cancelMarginMs;
  final String run = Long.toString(System.currentTimeMillis(), 36);
  final Random random = new Random(42);
  final List<Sent> sent = new ArrayList<>();
  final List<String> failures = new ArrayList<>();
  int seq;

  DelayInterop(
      String bootstrap,
      List<Tier> tiers,
      String cancelTopic,
      List<String> targets,
      long maxLateMs,
      long cancelMarginMs) {
    this.bootstrap = bootstrap;
    this.tiers = tiers;
    this.cancelTopic = cancelTopic;
    this.targets = targets;
    this.maxLateMs = maxLateMs;
    this.cancelMarginMs = cancelMarginMs;
  }

  public static void main(String[] args) throws Exception {
    String bootstrap = null;
    String cancel = null;
    List<Tier> tiers = new ArrayList<>();
    List<String> targets = new ArrayList<>();
    long maxLate = 1000;
    long cancelMargin = 2000;
    try {
      for (int i = 0; i < args.length; i += 2) {
        if (i + 1 >= args.length) {
          throw new IllegalArgumentException(args[i] + " needs a value");
        }
        String v = args[i + 1];
        switch (args[i]) {
          case "--bootstrap-servers" -> bootstrap = v;
          case "--tier" -> {
            int eq = v.lastIndexOf('=');
            if (eq <= 0) {
              throw new IllegalArgumentException("--tier takes TOPIC=DELAY_MS, not " + v);
            }
            tiers.add(new Tier(v.substring(0, eq), Long.parseLong(v.substring(eq + 1))));
          }
          case "--cancel-topic" -> cancel = v;
          case "--target" -> targets.add(v);
          case "--max-late-ms" -> maxLate = Long.parseLong(v);
          case "--cancel-margin-ms" -> cancelMargin = Long.parseLong(v);
          default -> throw new IllegalArgumentException("unknown argument " + args[i]);
        }
      }
      if (bootstrap == null || cancel == null || tiers.size() < 2 || targets.isEmpty()) {
        throw new IllegalArgumentException(
            "need --bootstrap-servers, --cancel-topic, two or more --tier TOPIC=DELAY_MS and a"
                + " --target");
      }
    } catch (IllegalArgumentException e) {
      System.err.println("usage error: " + e.getMessage());
      System.err.println(
          "usage: DelayInterop --bootstrap-servers HOST:PORT --tier TOPIC=DELAY_MS --tier ..."
              + " --cancel-topic TOPIC --target TOPIC [--target TOPIC] [--max-late-ms 1000]"
              + " [--cancel-margin-ms 2000]");
      System.exit(2);
    }
    tiers.sort(Comparator.comparingLong(Tier::delayMs));
    int failed =
        new DelayInterop(bootstrap, tiers, cancel, targets, maxLate, cancelMargin).run();
    System.exit(failed == 0 ? 0 : 1);
  }

  /** Runs everything; returns the number of failed checks. */
  int run() throws Exception {
    // The consumer first: assigned, positioned at the end of every target partition
    // (position() forces the offset lookup) before anything is produced.
    KafkaConsumer<byte[], byte[]> consumer = new KafkaConsumer<>(consumerProps());
    Map<String, Integer> partitions = new LinkedHashMap<>();
    List<TopicPartition> assigned = new ArrayList<>();
    for (String t : targets) {
      int n = consumer.partitionsFor(t, Duration.ofSeconds(30)).size();
      partitions.put(t, n);
      for (int p = 0; p < n; p++) {
        assigned.add(new TopicPartition(t, p));
      }
    }
    consumer.assign(assigned);
    consumer.seekToEnd(assigned);
    for (TopicPartition tp : assigned) {
      consumer.position(tp, Duration.ofSeconds(30));
    }
    System.out.println(
        "consumer positioned at the end of " + partitions + " (topic=partitions); run " + run);
    ConcurrentLinkedQueue<Arrival> arrivals = new ConcurrentLinkedQueue<>();
    AtomicBoolean stop = new AtomicBoolean();
    AtomicReference<Throwable> pollError = new AtomicReference<>();
    Thread poller =
        new Thread(
            () -> {
              try {
                while (!stop.get()) {
                  for (ConsumerRecord<byte[], byte[]> r : consumer.poll(Duration.ofMillis(50))) {
                    long now = System.currentTimeMillis();
                    arrivals.add(
                        new Arrival(
                            r.topic(),
                            r.partition(),
                            r.offset(),
                            r.key(),
                            r.value(),
                            list(r.headers()),
                            r.timestamp(),
                            now));
                  }
                }
              } catch (Throwable e) {
                pollError.set(e);
              } finally {
                consumer.close();
              }
            },
            "target-consumer");
    poller.start();

    Properties props = producerProps(StringSerializer.class);
    Properties binaryProps = producerProps(ByteArraySerializer.class);
    Map<String, Integer> controlPartition = new HashMap<>();
    try (KafkaProducer<String, String> producer = new KafkaProducer<>(props);
        KafkaProducer<byte[], byte[]> binary = new KafkaProducer<>(binaryProps)) {
      produceAll(producer, binary);
      // The cross-check: the Java producer's own partitioner, asked through a
      // control record with the same key sent straight to the target.
      for (Sent s : sent) {
        if (s.key == null) {
          continue;
        }
        String k = s.target + "/" + hex(s.key);
        if (!controlPartition.containsKey(k)) {
          ProducerRecord<byte[], byte[]> c =
              new ProducerRecord<>(s.target, s.key, "control".getBytes(UTF_8));
          c.headers().add(CONTROL, run.getBytes(UTF_8));
          controlPartition.put(k, binary.send(c).get().partition());
        }
      }
    }
    long cancelledDue =
        sent.stream().filter(s -> s.cancelled).mapToLong(s -> s.dueMs).max().orElse(0);
    long lastDue = sent.stream().filter(s -> !s.cancelled).mapToLong(s -> s.dueMs).max().orElse(0);
    // Past every due time plus the lateness bound (a second more for duplicates),
    // and past the cancelled record's due time plus the margin.
    long until = Math.max(lastDue + maxLateMs + 1000, cancelledDue + cancelMarginMs);
    System.out.printf(
        "sent %d delayed records (%d cancelled); watching until %s (%d ms from now)%n",
        sent.size(),
        sent.stream().filter(s -> s.cancelled).count(),
        Instant.ofEpochMilli(until),
        until - System.currentTimeMillis());
    while (System.currentTimeMillis() < until && pollError.get() == null) {
      Thread.sleep(Math.min(100, Math.max(1, until - System.currentTimeMillis())));
    }
    stop.set(true);
    poller.join(10_000);
    if (pollError.get() != null) {
      fail("consumer", "polling the targets failed: " + pollError.get());
    }
    return judge(new ArrayList<>(arrivals), partitions, controlPartition);
  }

  /** The delayed records: the README's snippets plus binary and edge cases. */
  void produceAll(KafkaProducer<String, String> producer, KafkaProducer<byte[], byte[]> binary)
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
        fixedDelay(producer, tier, target, keys[k++ % keys.length], "fixed");
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
      deliverAt(producer, i % 2 == 0 ? wide : other, keys[k++ % keys.length], delays[i]);
    }
    // One with an id, cancelled right away; one with an id never cancelled.
    cancelSnippet(wide);
    // Two delay-target headers: the last one counts (as Java's Headers.lastHeader).
    {
      Tier tier = tiers.get(1);
      ProducerRecord<String, String> r =
          new ProducerRecord<>(tier.topic(), "order-1", payload("two targets"));
      r.headers()
          .add("delay-target", "no-such-topic-interop".getBytes(UTF_8))
          .add("delay-target", wide.getBytes(UTF_8));
      extras(r.headers(), true);
      book(producer.send(r).get(), "two-targets", tier, wide, r, tier.delayMs());
    }
    // Binary keys and values from a byte[] producer: random bytes (not UTF-8), a
    // large value, a null value (tombstone), an empty value, no key at all.
    binaryRecord(binary, tiers.get(0), wide, bytes(8 + random.nextInt(24)), bytes(300));
    binaryRecord(binary, tiers.get(1), wide, bytes(16), bytes(100_000));
    binaryRecord(binary, tiers.get(tiers.size() - 1), wide, bytes(5), null);
    binaryRecord(binary, tiers.get(0), other, bytes(12), new byte[0]);
    binaryRecord(binary, tiers.get(1), wide, null, bytes(64));
  }

  /** The README's fixed delay, as kcat writes it: {@code delay-target} only. */
  void fixedDelay(
      KafkaProducer<String, String> producer, Tier tier, String target, String key, String kind)
      throws Exception {
    ProducerRecord<String, String> r = new ProducerRecord<>(tier.topic(), key, payload(kind));
    r.headers().add("delay-target", target.getBytes(StandardCharsets.UTF_8));
    extras(r.headers(), seq % 3 == 0);
    book(producer.send(r).get(), kind, tier, target, r, tier.delayMs());
  }

  /** The README's Java snippet of "Producing from other languages". */
  void deliverAt(KafkaProducer<String, String> producer, String target, String key, long delayMs)
      throws Exception {
    String payload = payload("deliver-at");
    Tier tier = largestTierNotLonger(delayMs);
    long deliverAt = Instant.now().plusMillis(delayMs).toEpochMilli();
    ProducerRecord<String, String> r = new ProducerRecord<>(tier.topic(), key, payload);
    r.headers().add("delay-target", target.getBytes(StandardCharsets.UTF_8));
    r.headers()
        .add("delay-deliver-at", Long.toString(deliverAt).getBytes(StandardCharsets.US_ASCII));
    extras(r.headers(), seq % 2 == 0);
    RecordMetadata md = producer.send(r).get();
    sent.add(
        new Sent(
            nextSeq(r),
            "deliver-at+" + delayMs,
            tier.topic(),
            target,
            bytesOf(key),
            bytesOf(payload),
            r.headers(),
            md.timestamp(),
            deliverAt));
  }

  /**
   * The README's Java snippet of "Cancelling and rescheduling" (with the test's topics and a
   * unique id), plus a record with another id that is never cancelled.
   */
  void cancelSnippet(String target) throws Exception {
    Tier tier = tiers.get(tiers.size() - 1);
    String id = "order-42-" + run;
    String kept = "order-43-" + run;
    Properties props = new Properties();
    props.put("bootstrap.servers", bootstrap);
    props.put("acks", "all");
    props.put("key.serializer", StringSerializer.class.getName());
    props.put("value.serializer", StringSerializer.class.getName());
    try (KafkaProducer<String, String> p = new KafkaProducer<>(props)) {
      ProducerRecord<String, String> r = new ProducerRecord<>(tier.topic(), id, "pay order 42");
      r.headers().add("delay-target", target.getBytes(UTF_8)).add("delay-id", id.getBytes(UTF_8));
      extras(r.headers(), true);
      Sent cancelled = book(p.send(r).get(), "cancelled", tier, target, r, tier.delayMs());
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
        fail(
            cancelled.seq,
            "the cancellation was acknowledged "
                + (acked - cancelled.dueMs)
                + " ms after the record's due time: the guarantee does not cover it (machine too"
                + " slow?)");
      }
      ProducerRecord<String, String> n = new ProducerRecord<>(tier.topic(), kept, "pay order 43");
      n.headers().add("delay-target", target.getBytes(UTF_8)).add("delay-id", kept.getBytes(UTF_8));
      extras(n.headers(), false);
      book(p.send(n).get(), "id-kept", tier, target, n, tier.delayMs());
    }
  }

  void binaryRecord(
      KafkaProducer<byte[], byte[]> binary, Tier tier, String target, byte[] key, byte[] value)
      throws Exception {
    ProducerRecord<byte[], byte[]> r = new ProducerRecord<>(tier.topic(), key, value);
    r.headers().add("delay-target", target.getBytes(UTF_8));
    extras(r.headers(), true);
    String kind =
        "binary"
            + (key == null ? "-keyless" : "")
            + (value == null ? "-null-value" : value.length == 0 ? "-empty-value" : "")
            + (value != null && value.length > 10_000 ? "-large" : "");
    RecordMetadata md = binary.send(r).get();
    sent.add(
        new Sent(
            nextSeq(r),
            kind,
            tier.topic(),
            target,
            key,
            value,
            r.headers(),
            md.timestamp(),
            md.timestamp() + tier.delayMs()));
  }

  /** Books a String record sent with a fixed delay ({@code dueAfterMs} past its timestamp). */
  Sent book(
      RecordMetadata md,
      String kind,
      Tier tier,
      String target,
      ProducerRecord<String, String> r,
      long dueAfterMs) {
    Sent s =
        new Sent(
            nextSeq(r),
            kind,
            tier.topic(),
            target,
            bytesOf(r.key()),
            bytesOf(r.value()),
            r.headers(),
            md.timestamp(),
            md.timestamp() + dueAfterMs);
    sent.add(s);
    return s;
  }

  String nextSeq(ProducerRecord<?, ?> r) {
    return new String(r.headers().lastHeader(SEQ).value(), UTF_8);
  }

  /**
   * The test's own headers: a unique sequence header (how arrivals are matched) and binary
   * bytes; with {@code edgy}, a repeated key, an empty value, a null value and a non-ASCII key.
   */
  void extras(Headers h, boolean edgy) {
    h.add(SEQ, (run + "-" + seq++).getBytes(UTF_8));
    h.add("x-binary", new byte[] {0, (byte) 0xff, (byte) 0xfe, 0x7f, (byte) 0x80, 10, 13, 0});
    if (edgy) {
      h.add("x-dup", "first".getBytes(UTF_8));
      h.add("x-empty", new byte[0]);
      h.add("x-null", null);
      h.add("x-dup", "second".getBytes(UTF_8));
      h.add("x-ünïcödé-ключ", "значение ✓".getBytes(UTF_8));
    }
  }

  String payload(String kind) {
    return kind + " " + seq + ": naïve ✓ 🚀 \u0000\u0001\t\r\n \"quoted\" \\ end";
  }

  byte[] bytes(int n) {
    byte[] b = new byte[n];
    random.nextBytes(b);
    if (n > 2) {
      b[0] = (byte) 0xff; // never valid UTF-8
      b[1] = 0;
    }
    return b;
  }

  Tier largestTierNotLonger(long delayMs) {
    Tier best = tiers.get(0);
    for (Tier t : tiers) {
      if (t.delayMs() <= delayMs) {
        best = t;
      }
    }
    return best;
  }

  /** Checks the arrivals; prints every record and the summary; returns the failures. */
  int judge(
      List<Arrival> arrivals,
      Map<String, Integer> partitions,
      Map<String, Integer> controlPartition) {
    Map<String, List<Arrival>> bySeq = new HashMap<>();
    for (Arrival a : arrivals) {
      Hdr control = last(a.headers(), CONTROL);
      if (control != null) {
        continue;
      }
      Hdr s = last(a.headers(), SEQ);
      String seqOf = s == null || s.value() == null ? null : new String(s.value(), UTF_8);
      if (seqOf == null || !seqOf.startsWith(run + "-")) {
        fail(
            "unexpected",
            "a record nobody sent arrived on " + a.topic() + " p" + a.partition() + "@" + a.offset());
        continue;
      }
      bySeq.computeIfAbsent(seqOf, x -> new ArrayList<>()).add(a);
    }
    int delivered = 0, lost = 0, duplicated = 0, early = 0, late = 0, misplaced = 0, altered = 0;
    int cancelled = 0, cancelledAbsent = 0, partitionChecked = 0;
    List<Long> lateness = new ArrayList<>();
    Set<String> extraHeaderNames = new TreeSet<>();
    Set<String> keysChecked = new HashSet<>();
    for (Sent s : sent) {
      List<Arrival> got = bySeq.getOrDefault(s.seq, List.of());
      String what = s.seq + " (" + s.kind + ", key " + show(s.key) + ", via " + s.tier + ")";
      if (s.cancelled) {
        cancelled++;
        if (got.isEmpty()) {
          cancelledAbsent++;
          System.out.printf("  %s cancelled: never arrived (as it should)%n", what);
        } else {
          Arrival a = got.get(0);
          fail(
              s.seq,
              what
                  + " was cancelled before its due time but arrived on "
                  + a.topic()
                  + " p"
                  + a.partition()
                  + "@"
                  + a.offset()
                  + ", "
                  + (a.arrivedMs() - s.dueMs)
                  + " ms after due");
        }
        continue;
      }
      if (got.isEmpty()) {
        lost++;
        fail(s.seq, what + " never arrived on " + s.target);
        continue;
      }
      delivered++;
      if (got.size() > 1) {
        duplicated++;
        fail(s.seq, what + " arrived " + got.size() + " times");
      }
      Arrival a = got.get(0);
      long l = a.arrivedMs() - s.dueMs;
      lateness.add(l);
      if (a.arrivedMs() < s.dueMs || a.timestampMs() < s.dueMs) {
        early++;
        fail(
            s.seq,
            what
                + " arrived early: due "
                + Instant.ofEpochMilli(s.dueMs)
                + ", arrived "
                + Instant.ofEpochMilli(a.arrivedMs())
                + ", timestamp "
                + Instant.ofEpochMilli(a.timestampMs()));
      } else if (l > maxLateMs) {
        late++;
        fail(s.seq, what + " arrived " + l + " ms late, more than --max-late-ms " + maxLateMs);
      }
      // Where: the target, and the partition Java's default partitioner picks for the key.
      String where;
      if (!a.topic().equals(s.target)) {
        misplaced++;
        where = "WRONG TOPIC";
        fail(s.seq, what + " arrived on " + a.topic() + ", not its target " + s.target);
      } else if (s.key == null) {
        where = "keyless, partition not checked";
      } else {
        int n = partitions.get(s.target);
        int formula = Utils.toPositive(Utils.murmur2(s.key)) % n;
        Integer control = controlPartition.get(s.target + "/" + hex(s.key));
        partitionChecked++;
        keysChecked.add(s.target + "/" + hex(s.key));
        if (control == null || control != formula) {
          fail(
              s.seq,
              "the Java producer put key "
                  + show(s.key)
                  + " in "
                  + s.target
                  + " p"
                  + control
                  + " but toPositive(murmur2(key)) % "
                  + n
                  + " is "
                  + formula);
        }
        if (a.partition() != formula) {
          misplaced++;
          where = "WRONG PARTITION, Java's is p" + formula;
          fail(
              s.seq,
              what
                  + " arrived in "
                  + s.target
                  + " p"
                  + a.partition()
                  + ", the Java producer's partitioner picks p"
                  + formula
                  + " (of "
                  + n
                  + ")");
        } else {
          where = "= Java's p" + formula + " of " + n;
        }
      }
      // What: key, value and headers byte for byte; the only extra header is the
      // original timestamp.
      List<String> diffs = new ArrayList<>();
      if (!Arrays.equals(s.key, a.key())) {
        diffs.add("key " + show(s.key) + " arrived as " + show(a.key()));
      }
      if (!Arrays.equals(s.value, a.value())) {
        diffs.add(
            "value of "
                + (s.value == null ? "null" : s.value.length + " bytes")
                + " arrived as "
                + (a.value() == null ? "null" : a.value().length + " bytes")
                + " (" + show(a.value()) + ")");
      }
      Set<String> originalNames = new HashSet<>();
      s.headers.forEach(h -> originalNames.add(h.key()));
      List<Hdr> kept = new ArrayList<>();
      for (Hdr h : a.headers()) {
        if (originalNames.contains(h.key())) {
          kept.add(h);
        } else {
          extraHeaderNames.add(h.key());
          if (!h.key().equals(ORIGINAL_TIMESTAMP)) {
            diffs.add("an extra header " + h);
          }
        }
      }
      if (!sameHeaders(s.headers, kept)) {
        diffs.add("headers " + s.headers + " arrived as " + kept);
      }
      List<Hdr> ts = a.headers().stream().filter(h -> h.key().equals(ORIGINAL_TIMESTAMP)).toList();
      String wantTs = Long.toString(s.timestampMs);
      if (ts.size() != 1
          || ts.get(0).value() == null
          || !wantTs.equals(new String(ts.get(0).value(), UTF_8))) {
        diffs.add(ORIGINAL_TIMESTAMP + " should be once " + wantTs + ", is " + ts);
      }
      if (!diffs.isEmpty()) {
        altered++;
        fail(s.seq, what + " arrived altered: " + String.join("; ", diffs));
      }
      System.out.printf(
          "  %s -> %s p%d@%d (%s) due=%s arrived=%s lateness=%+d ms%s%n",
          what,
          a.topic(),
          a.partition(),
          a.offset(),
          where,
          Instant.ofEpochMilli(s.dueMs),
          Instant.ofEpochMilli(a.arrivedMs()),
          l,
          diffs.isEmpty() ? "" : " ALTERED");
    }
    lateness.sort(null);
    long maxLate = lateness.isEmpty() ? 0 : lateness.get(lateness.size() - 1);
    long p50 = lateness.isEmpty() ? 0 : lateness.get(lateness.size() / 2);
    System.out.println(
        "headers the router added: " + extraHeaderNames + "; partition checked for "
            + partitionChecked + " records (" + keysChecked.size() + " target/key pairs)");
    for (String f : failures) {
      System.out.println("FAIL " + f);
    }
    int notCancelled = sent.size() - cancelled;
    System.out.printf(
        "java interop: %d of %d delivered, %d lost, %d duplicated, %d early, %d late (> %d ms),"
            + " %d misplaced, %d altered, cancelled %d of %d never arrived, lateness max %d ms"
            + " (p50 %d ms)%n",
        delivered,
        notCancelled,
        lost,
        duplicated,
        early,
        late,
        maxLateMs,
        misplaced,
        altered,
        cancelledAbsent,
        cancelled,
        maxLate,
        p50);
    return failures.size();
  }

  void fail(String who, String message) {
    failures.add(who + ": " + message);
  }

  Properties producerProps(Class<?> serializer) {
    Properties props = new Properties();
    props.put("bootstrap.servers", bootstrap);
    props.put("acks", "all");
    props.put("key.serializer", serializer.getName());
    props.put("value.serializer", serializer.getName());
    return props;
  }

  Properties consumerProps() {
    Properties props = new Properties();
    props.put("bootstrap.servers", bootstrap);
    props.put("key.deserializer", ByteArrayDeserializer.class.getName());
    props.put("value.deserializer", ByteArrayDeserializer.class.getName());
    props.put("enable.auto.commit", "false");
    props.put("fetch.max.wait.ms", "50");
    return props;
  }

  static List<Hdr> list(Headers headers) {
    List<Hdr> l = new ArrayList<>();
    for (Header h : headers) {
      l.add(new Hdr(h.key(), h.value() == null ? null : h.value().clone()));
    }
    return l;
  }

  static Hdr last(List<Hdr> headers, String key) {
    Hdr found = null;
    for (Hdr h : headers) {
      if (h.key().equals(key)) {
        found = h;
      }
    }
    return found;
  }

  static boolean sameHeaders(List<Hdr> a, List<Hdr> b) {
    if (a.size() != b.size()) {
      return false;
    }
    for (int i = 0; i < a.size(); i++) {
      if (!a.get(i).key().equals(b.get(i).key())
          || !Arrays.equals(a.get(i).value(), b.get(i).value())) {
        return false;
      }
    }
    return true;
  }

  static byte[] bytesOf(String s) {
    return s == null ? null : s.getBytes(UTF_8);
  }

  static String hex(byte[] b) {
    StringBuilder sb = new StringBuilder();
    for (byte x : b) {
      sb.append(String.format("%02x", x));
    }
    return sb.toString();
  }

  /** Bytes for a log line: quoted text if printable UTF-8, else hex; null, or the length if long. */
  static String show(byte[] b) {
    if (b == null) {
      return "null";
    }
    if (b.length > 40) {
      return b.length + " bytes";
    }
    String s = new String(b, UTF_8);
    boolean printable =
        Arrays.equals(s.getBytes(UTF_8), b) && s.codePoints().noneMatch(Character::isISOControl);
    return printable ? "\"" + s + "\"" : "0x" + hex(b);
  }
}
