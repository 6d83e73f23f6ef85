package kdr.interop;

import java.time.Duration;
import java.util.ArrayList;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.Properties;
import java.util.concurrent.ConcurrentLinkedQueue;
import java.util.concurrent.atomic.AtomicBoolean;
import java.util.concurrent.atomic.AtomicReference;
import org.apache.kafka.clients.consumer.ConsumerRecord;
import org.apache.kafka.clients.consumer.KafkaConsumer;
import org.apache.kafka.common.TopicPartition;
import org.apache.kafka.common.serialization.ByteArrayDeserializer;

/**
 * The plain {@code KafkaConsumer} on the targets: assigned every partition and positioned at
 * the end before anything is produced (so it sees every arrival and nothing older), then polled
 * on a thread of its own that stamps each record with the time it arrived.
 */
final class TargetReader {
  /** Each target and its number of partitions, in {@code --target} order. */
  final Map<String, Integer> partitions = new LinkedHashMap<>();

  private final KafkaConsumer<byte[], byte[]> consumer;
  private final ConcurrentLinkedQueue<Arrival> arrivals = new ConcurrentLinkedQueue<>();
  private final AtomicBoolean stop = new AtomicBoolean();
  private final AtomicReference<Throwable> pollError = new AtomicReference<>();
  private final Thread poller = new Thread(this::poll, "target-consumer");

  /** Assigns and positions the consumer (position() forces the offset lookup); polls nothing. */
  TargetReader(String bootstrap, List<String> targets) {
    consumer = new KafkaConsumer<>(consumerProps(bootstrap));
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
  }

  /**
   * Starts polling; the consumer is closed by the polling thread when it ends. A daemon thread:
   * if producing fails, the program exits with its error instead of hanging on the reader.
   */
  void start() {
    poller.setDaemon(true);
    poller.start();
  }

  /** Why polling stopped on its own, or null while it runs (or if it was stopped). */
  Throwable error() {
    return pollError.get();
  }

  /** Stops polling, waiting up to 10 s for the thread to end. */
  void stop() throws InterruptedException {
    stop.set(true);
    poller.join(10_000);
  }

  /** Everything that arrived so far, in arrival order. */
  List<Arrival> arrivals() {
    return new ArrayList<>(arrivals);
  }

  private void poll() {
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
                  Hdr.list(r.headers()),
                  r.timestamp(),
                  now));
        }
      }
    } catch (Throwable e) {
      pollError.set(e);
    } finally {
      consumer.close();
    }
  }

  private static Properties consumerProps(String bootstrap) {
    Properties props = new Properties();
    props.put("bootstrap.servers", bootstrap);
    props.put("key.deserializer", ByteArrayDeserializer.class.getName());
    props.put("value.deserializer", ByteArrayDeserializer.class.getName());
    props.put("enable.auto.commit", "false");
    props.put("fetch.max.wait.ms", "50");
    return props;
  }
}
