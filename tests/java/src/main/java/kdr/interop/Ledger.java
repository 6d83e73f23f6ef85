package kdr.interop;

import static java.nio.charset.StandardCharsets.UTF_8;

import java.util.ArrayList;
import java.util.List;
import org.apache.kafka.clients.producer.ProducerRecord;
import org.apache.kafka.clients.producer.RecordMetadata;
import org.apache.kafka.common.header.Headers;

/**
 * The run's book: its id, the test's own headers (a unique sequence header on every delayed
 * record, how arrivals are matched), every delayed record as sent, and the failures found.
 */
final class Ledger {
  /** The sequence header: {@code <run>-<n>}, unique to each delayed record of this run. */
  static final String SEQ = "interop-seq";
  /** Marks a control record, sent straight to a target to ask the producer's partitioner. */
  static final String CONTROL = "interop-control";

  /** This run's id: the prefix of every sequence header, and in the ids cancelled. */
  final String run = Long.toString(System.currentTimeMillis(), 36);
  final List<Sent> sent = new ArrayList<>();
  final List<String> failures = new ArrayList<>();
  private int seq;

  /** The sequence number the next record gets. */
  int seq() {
    return seq;
  }

  /**
   * The test's own headers: a unique sequence header and binary bytes; with {@code edgy}, a
   * repeated key, an empty value, a null value and a non-ASCII key.
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

  /** A String value with control characters, quotes and non-ASCII text. */
  String payload(String kind) {
    return kind + " " + seq + ": naïve ✓ 🚀 \u0000\u0001\t\r\n \"quoted\" \\ end";
  }

  /** Books a record sent with a fixed delay: due at its timestamp plus the tier's delay. */
  Sent book(RecordMetadata md, String kind, Tier tier, String target, ProducerRecord<?, ?> r) {
    return book(md, kind, tier, target, r, md.timestamp() + tier.delayMs());
  }

  /** Books a record sent (String or byte[] key and value), due at {@code dueMs}. */
  Sent book(
      RecordMetadata md,
      String kind,
      Tier tier,
      String target,
      ProducerRecord<?, ?> r,
      long dueMs) {
    Sent s =
        new Sent(
            new String(r.headers().lastHeader(SEQ).value(), UTF_8),
            kind,
            tier.topic(),
            target,
            bytes(r.key()),
            bytes(r.value()),
            r.headers(),
            md.timestamp(),
            dueMs);
    sent.add(s);
    return s;
  }

  void fail(String who, String message) {
    failures.add(who + ": " + message);
  }

  private static byte[] bytes(Object keyOrValue) {
    return keyOrValue instanceof String s ? Bytes.of(s) : (byte[]) keyOrValue;
  }
}
