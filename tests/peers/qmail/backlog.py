#!/usr/bin/python3
"""A TCP listener whose backlog is full, for connect-timeout tests.

Usage: backlog.py HOST PORT

Listens on HOST:PORT (PORT 0: the kernel picks) with a backlog of 0, makes
one connection to itself that it never accepts, which fills the accept
queue: Linux then drops the SYNs of every other client, whose connect()
times out. Prints the port on stdout once that is so (the readiness
signal). Exits 98 if the address is taken, and when stdin reaches end of
file.
"""

import errno
import os
import socket
import sys


def main():
    host, port = sys.argv[1], int(sys.argv[2])
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    listener = socket.socket(family, socket.SOCK_STREAM)
    try:
        listener.bind((host, port))
    except OSError as e:
        if e.errno in (errno.EADDRINUSE, errno.EADDRNOTAVAIL):
            sys.stderr.write("backlog.py: cannot bind %s:%d: %s\n" % (host, port, e))
            os._exit(98)
        raise
    listener.listen(0)
    addr = listener.getsockname()
    # The connection that fills the queue (kept open, never accepted).
    filler = socket.create_connection(addr[:2], timeout=5)
    # Check that the queue is full: another connect must not complete.
    probe = socket.socket(family, socket.SOCK_STREAM)
    probe.settimeout(0.3)
    try:
        probe.connect(addr[:2])
        sys.stderr.write("backlog.py: the backlog does not fill up\n")
        os._exit(1)
    except socket.timeout:
        pass
    finally:
        probe.close()
    sys.stdout.write("%d\n" % addr[1])
    sys.stdout.flush()
    while sys.stdin.buffer.read(4096):
        pass
    filler.close()
    os._exit(0)


if __name__ == "__main__":
    main()
