package kdr.interop;

import java.util.List;

/** A record the target consumer saw, with the time it arrived ({@code arrivedMs}). */
record Arrival(
    String topic,
    int partition,
    long offset,
    byte[] key,
    byte[] value,
    List<Hdr> headers,
    long timestampMs,
    long arrivedMs) {}
