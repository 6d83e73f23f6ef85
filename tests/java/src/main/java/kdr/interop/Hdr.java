package kdr.interop;

import java.util.ArrayList;
import java.util.Arrays;
import java.util.List;
import org.apache.kafka.common.header.Header;
import org.apache.kafka.common.header.Headers;

/** A header as sent or received: key and value bytes (null for a null value). */
record Hdr(String key, byte[] value) {

  @Override
  public String toString() {
    return key + "=" + Bytes.show(value);
  }

  /** A copy of Kafka headers, in order, duplicates and null values included. */
  static List<Hdr> list(Headers headers) {
    List<Hdr> l = new ArrayList<>();
    for (Header h : headers) {
      l.add(new Hdr(h.key(), h.value() == null ? null : h.value().clone()));
    }
    return l;
  }

  /** The last header with this key (as Java's {@code Headers.lastHeader}), or null. */
  static Hdr last(List<Hdr> headers, String key) {
    Hdr found = null;
    for (Hdr h : headers) {
      if (h.key().equals(key)) {
        found = h;
      }
    }
    return found;
  }

  /** Whether two header lists are the same: same keys and value bytes, in the same order. */
  static boolean same(List<Hdr> a, List<Hdr> b) {
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
}
