package kdr.interop;

import java.util.List;

/** A tier topic and its fixed delay, as given by {@code --tier TOPIC=DELAY_MS}. */
record Tier(String topic, long delayMs) {

  /**
   * The cascade's entry tier for a delay: the largest tier not longer than it, else the shortest.
   * {@code tiers} is sorted by delay.
   */
  static Tier largestNotLonger(List<Tier> tiers, long delayMs) {
    Tier best = tiers.get(0);
    for (Tier t : tiers) {
      if (t.delayMs() <= delayMs) {
        best = t;
      }
    }
    return best;
  }
}
