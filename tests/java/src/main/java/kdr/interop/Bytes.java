package kdr.interop;

import static java.nio.charset.StandardCharsets.UTF_8;

import java.util.Arrays;

/** Byte helpers: UTF-8 encoding that keeps null, hex, and bytes shown in a log line. */
final class Bytes {
  private Bytes() {}

  /** A String's UTF-8 bytes, null for null. */
  static byte[] of(String s) {
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
