package kdr.interop;

import java.util.List;
import org.apache.kafka.common.header.Headers;

/** A delayed record as produced, with what is expected of its delivery. */
final class Sent {
  /** The value of its {@code interop-seq} header: how its arrival is found. */
  final String seq;
  /** The case it belongs to, for the log ("fixed", "deliver-at+1500", "cancelled", ...). */
  final String kind;
  /** The tier topic it was written to. */
  final String tier;
  final String target;
  final byte[] key;
  final byte[] value;
  /** Its headers as sent. */
  final List<Hdr> headers;
  /** The timestamp the broker acknowledged it with. */
  final long timestampMs;
  /** When it is due: the timestamp plus the tier's delay, or its {@code delay-deliver-at}. */
  final long dueMs;
  /** Cancelled before its due time: it must never arrive. */
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
    this.headers = Hdr.list(headers);
    this.timestampMs = timestampMs;
    this.dueMs = dueMs;
  }
}
