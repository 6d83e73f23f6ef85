package kdr.interop;

import static java.nio.charset.StandardCharsets.UTF_8;

import java.time.Instant;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.HashMap;
import java.util.HashSet;
import java.util.List;
import java.util.Map;
import java.util.Set;
import java.util.TreeSet;
import org.apache.kafka.common.utils.Utils;

/**
 * The checks, once the watch is over: every record not cancelled arrived exactly once, not
 * before its due time and at most {@code --max-late-ms} after it, on its target, in the
 * partition the Java producer picks for its key, byte for byte unchanged (the one extra header
 * being {@code delay-original-timestamp}); the cancelled one never arrived; nothing else did.
 * Prints every record, the failures and the summary line that tests/java_client.rs parses.
 */
final class Checks {
  static final String ORIGINAL_TIMESTAMP = "delay-original-timestamp";

  private final Ledger ledger;
  private final long maxLateMs;
  private final Map<String, Integer> partitions;
  private final Map<String, Integer> controlPartition;

  private int delivered, lost, duplicated, early, late, misplaced, altered;
  private int cancelled, cancelledAbsent, partitionChecked;
  private final List<Long> lateness = new ArrayList<>();
  private final Set<String> extraHeaderNames = new TreeSet<>();
  private final Set<String> keysChecked = new HashSet<>();

  /**
   * @param partitions each target's number of partitions
   * @param controlPartition where the Java producer put each control record, by {@link
   *     Senders#controlKey}
   */
  Checks(
      Ledger ledger,
      long maxLateMs,
      Map<String, Integer> partitions,
      Map<String, Integer> controlPartition) {
    this.ledger = ledger;
    this.maxLateMs = maxLateMs;
    this.partitions = partitions;
    this.controlPartition = controlPartition;
  }

  /** Checks the arrivals; prints every record and the summary; returns the failures. */
  int judge(List<Arrival> arrivals) {
    Map<String, List<Arrival>> bySeq = bySeq(arrivals);
    for (Sent s : ledger.sent) {
      check(s, bySeq.getOrDefault(s.seq, List.of()));
    }
    summary();
    return ledger.failures.size();
  }

  /** The arrivals by sequence header, control records left out; any other record fails. */
  private Map<String, List<Arrival>> bySeq(List<Arrival> arrivals) {
    Map<String, List<Arrival>> bySeq = new HashMap<>();
    for (Arrival a : arrivals) {
      Hdr control = Hdr.last(a.headers(), Ledger.CONTROL);
      if (control != null) {
        continue;
      }
      Hdr s = Hdr.last(a.headers(), Ledger.SEQ);
      String seqOf = s == null || s.value() == null ? null : new String(s.value(), UTF_8);
      if (seqOf == null || !seqOf.startsWith(ledger.run + "-")) {
        ledger.fail(
            "unexpected",
            "a record nobody sent arrived on " + a.topic() + " p" + a.partition() + "@" + a.offset());
        continue;
      }
      bySeq.computeIfAbsent(seqOf, x -> new ArrayList<>()).add(a);
    }
    return bySeq;
  }

  /** One record: whether, how often, when, where and what arrived; prints its line. */
  private void check(Sent s, List<Arrival> got) {
    String what = s.seq + " (" + s.kind + ", key " + Bytes.show(s.key) + ", via " + s.tier + ")";
    if (s.cancelled) {
      cancelled++;
      if (got.isEmpty()) {
        cancelledAbsent++;
        System.out.printf("  %s cancelled: never arrived (as it should)%n", what);
      } else {
        Arrival a = got.get(0);
        ledger.fail(
            s.seq,
            what + " was cancelled before its due time but arrived on " + a.topic()
                + " p" + a.partition() + "@" + a.offset() + ", "
                + (a.arrivedMs() - s.dueMs) + " ms after due");
      }
      return;
    }
    if (got.isEmpty()) {
      lost++;
      ledger.fail(s.seq, what + " never arrived on " + s.target);
      return;
    }
    delivered++;
    if (got.size() > 1) {
      duplicated++;
      ledger.fail(s.seq, what + " arrived " + got.size() + " times");
    }
    Arrival a = got.get(0);
    long l = a.arrivedMs() - s.dueMs;
    lateness.add(l);
    if (a.arrivedMs() < s.dueMs || a.timestampMs() < s.dueMs) {
      early++;
      ledger.fail(
          s.seq,
          what + " arrived early: due " + Instant.ofEpochMilli(s.dueMs)
              + ", arrived " + Instant.ofEpochMilli(a.arrivedMs())
              + ", timestamp " + Instant.ofEpochMilli(a.timestampMs()));
    } else if (l > maxLateMs) {
      late++;
      ledger.fail(s.seq, what + " arrived " + l + " ms late, more than --max-late-ms " + maxLateMs);
    }
    String where = where(s, a, what);
    List<String> diffs = diffs(s, a);
    if (!diffs.isEmpty()) {
      altered++;
      ledger.fail(s.seq, what + " arrived altered: " + String.join("; ", diffs));
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

  /**
   * Where: the target, and the partition Java's default partitioner picks for the key ({@code
   * toPositive(murmur2(key)) % partitions}, which the control record must confirm).
   */
  private String where(Sent s, Arrival a, String what) {
    if (!a.topic().equals(s.target)) {
      misplaced++;
      ledger.fail(s.seq, what + " arrived on " + a.topic() + ", not its target " + s.target);
      return "WRONG TOPIC";
    }
    if (s.key == null) {
      return "keyless, partition not checked";
    }
    int n = partitions.get(s.target);
    int formula = Utils.toPositive(Utils.murmur2(s.key)) % n;
    Integer control = controlPartition.get(Senders.controlKey(s.target, s.key));
    partitionChecked++;
    keysChecked.add(Senders.controlKey(s.target, s.key));
    if (control == null || control != formula) {
      ledger.fail(
          s.seq,
          "the Java producer put key " + Bytes.show(s.key) + " in " + s.target + " p" + control
              + " but toPositive(murmur2(key)) % " + n + " is " + formula);
    }
    if (a.partition() != formula) {
      misplaced++;
      ledger.fail(
          s.seq,
          what + " arrived in " + s.target + " p" + a.partition()
              + ", the Java producer's partitioner picks p" + formula + " (of " + n + ")");
      return "WRONG PARTITION, Java's is p" + formula;
    }
    return "= Java's p" + formula + " of " + n;
  }

  /**
   * What: key, value and headers byte for byte; the only extra header allowed is the original
   * timestamp, exactly once and equal to the send timestamp. Returns the differences.
   */
  private List<String> diffs(Sent s, Arrival a) {
    List<String> diffs = new ArrayList<>();
    if (!Arrays.equals(s.key, a.key())) {
      diffs.add("key " + Bytes.show(s.key) + " arrived as " + Bytes.show(a.key()));
    }
    if (!Arrays.equals(s.value, a.value())) {
      diffs.add(
          "value of " + (s.value == null ? "null" : s.value.length + " bytes") + " arrived as "
              + (a.value() == null ? "null" : a.value().length + " bytes")
              + " (" + Bytes.show(a.value()) + ")");
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
    if (!Hdr.same(s.headers, kept)) {
      diffs.add("headers " + s.headers + " arrived as " + kept);
    }
    List<Hdr> ts = a.headers().stream().filter(h -> h.key().equals(ORIGINAL_TIMESTAMP)).toList();
    String wantTs = Long.toString(s.timestampMs);
    if (ts.size() != 1
        || ts.get(0).value() == null
        || !wantTs.equals(new String(ts.get(0).value(), UTF_8))) {
      diffs.add(ORIGINAL_TIMESTAMP + " should be once " + wantTs + ", is " + ts);
    }
    return diffs;
  }

  /** The headers the router added, every failure, and the summary line (format fixed). */
  private void summary() {
    lateness.sort(null);
    long maxLate = lateness.isEmpty() ? 0 : lateness.get(lateness.size() - 1);
    long p50 = lateness.isEmpty() ? 0 : lateness.get(lateness.size() / 2);
    System.out.println(
        "headers the router added: " + extraHeaderNames + "; partition checked for "
            + partitionChecked + " records (" + keysChecked.size() + " target/key pairs)");
    for (String f : ledger.failures) {
      System.out.println("FAIL " + f);
    }
    int notCancelled = ledger.sent.size() - cancelled;
    // tests/java_client.rs parses this line: keep its wording.
    System.out.printf(
        "java interop: %d of %d delivered, %d lost, %d duplicated, %d early, %d late (> %d ms),"
            + " %d misplaced, %d altered, cancelled %d of %d never arrived, lateness max %d ms"
            + " (p50 %d ms)%n",
        delivered, notCancelled, lost, duplicated, early, late, maxLateMs,
        misplaced, altered, cancelledAbsent, cancelled, maxLate, p50);
  }
}
