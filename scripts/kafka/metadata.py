#!/usr/bin/env python3
"""Asks a Kafka broker for its cluster metadata (one Metadata v1 request, no
topics) and prints `brokers=N controller=ID` on success; exits 1 when the
broker does not answer. scripts/broker.sh uses it to wait until a broker
serves requests: a KRaft broker opens request processing only once it has
caught up with the metadata log and is unfenced, so an answer listing the
expected number of brokers means the cluster is ready for clients.

    metadata.py HOST:PORT [TIMEOUT_SECONDS]
"""
import socket
import struct
import sys


def read_exact(sock, n):
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            raise ConnectionError("connection closed")
        data += chunk
    return data


def main():
    host, port = sys.argv[1].rsplit(":", 1)
    timeout = float(sys.argv[2]) if len(sys.argv) > 2 else 2.0
    client_id = b"broker.sh"
    # Header v1: api_key 3 (Metadata), api_version 1, correlation id, client id.
    body = struct.pack(">hhih", 3, 1, 7, len(client_id)) + client_id
    body += struct.pack(">i", 0)  # topics: an empty array asks for none
    try:
        with socket.create_connection((host, int(port)), timeout=timeout) as sock:
            sock.sendall(struct.pack(">i", len(body)) + body)
            (size,) = struct.unpack(">i", read_exact(sock, 4))
            resp = read_exact(sock, size)
    except (OSError, ConnectionError):
        sys.exit(1)
    (correlation, count) = struct.unpack_from(">ii", resp, 0)
    if correlation != 7:
        sys.exit(1)
    pos = 8
    for _ in range(count):
        pos += 4  # node id
        (hlen,) = struct.unpack_from(">h", resp, pos)
        pos += 2 + hlen + 4  # host, port
        (rlen,) = struct.unpack_from(">h", resp, pos)
        pos += 2 + max(rlen, 0)  # rack (nullable)
    (controller,) = struct.unpack_from(">i", resp, pos)
    print(f"brokers={count} controller={controller}")


if __name__ == "__main__":
    main()
