package kdr.interop;

import java.time.Instant;
import java.util.ArrayList;
import java.util.Comparator;
import java.util.List;
import java.util.Map;

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
 *
 * <p>This class parses the arguments and runs the flow: {@link TargetReader} (the consumer),
 * {@link Senders} and {@link ReadmeSnippets} (the producing, booked in a {@link Ledger}), then
 * {@link Checks} (the checks and the summary line).
 */
public final class DelayInterop {

  /** The command line. */
  record Options(
      String bootstrap,
      List<Tier> tiers,
      String cancelTopic,
      List<String> targets,
      long maxLateMs,
      long cancelMarginMs) {}

  public static void main(String[] args) throws Exception {
    Options o = null;
    try {
      o = parse(args);
    } catch (IllegalArgumentException e) {
      System.err.println("usage error: " + e.getMessage());
      System.err.println(
          "usage: DelayInterop --bootstrap-servers HOST:PORT --tier TOPIC=DELAY_MS --tier ..."
              + " --cancel-topic TOPIC --target TOPIC [--target TOPIC] [--max-late-ms 1000]"
              + " [--cancel-margin-ms 2000]");
      System.exit(2);
    }
    int failed = run(o);
    System.exit(failed == 0 ? 0 : 1);
  }

  /** Parses the command line; tiers come out sorted by delay. */
  static Options parse(String[] args) {
    String bootstrap = null;
    String cancel = null;
    List<Tier> tiers = new ArrayList<>();
    List<String> targets = new ArrayList<>();
    long maxLate = 1000;
    long cancelMargin = 2000;
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
    tiers.sort(Comparator.comparingLong(Tier::delayMs));
    return new Options(bootstrap, tiers, cancel, targets, maxLate, cancelMargin);
  }

  /** Runs everything; returns the number of failed checks. */
  static int run(Options o) throws Exception {
    Ledger ledger = new Ledger();
    // The consumer first: positioned at the end of every target partition before
    // anything is produced.
    TargetReader reader = new TargetReader(o.bootstrap(), o.targets());
    System.out.println(
        "consumer positioned at the end of " + reader.partitions + " (topic=partitions); run "
            + ledger.run);
    reader.start();

    Map<String, Integer> controlPartition =
        new Senders(o.bootstrap(), o.tiers(), o.cancelTopic(), o.targets(), ledger).produceAll();
    List<Sent> sent = ledger.sent;
    long cancelledDue =
        sent.stream().filter(s -> s.cancelled).mapToLong(s -> s.dueMs).max().orElse(0);
    long lastDue = sent.stream().filter(s -> !s.cancelled).mapToLong(s -> s.dueMs).max().orElse(0);
    // Past every due time plus the lateness bound (a second more for duplicates),
    // and past the cancelled record's due time plus the margin.
    long until = Math.max(lastDue + o.maxLateMs() + 1000, cancelledDue + o.cancelMarginMs());
    System.out.printf(
        "sent %d delayed records (%d cancelled); watching until %s (%d ms from now)%n",
        sent.size(),
        sent.stream().filter(s -> s.cancelled).count(),
        Instant.ofEpochMilli(until),
        until - System.currentTimeMillis());
    while (System.currentTimeMillis() < until && reader.error() == null) {
      Thread.sleep(Math.min(100, Math.max(1, until - System.currentTimeMillis())));
    }
    reader.stop();
    if (reader.error() != null) {
      ledger.fail("consumer", "polling the targets failed: " + reader.error());
    }
    return new Checks(ledger, o.maxLateMs(), reader.partitions, controlPartition)
        .judge(reader.arrivals());
  }
}
