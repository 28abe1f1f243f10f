#!/usr/bin/python3
"""A small authoritative DNS server on loopback for chainmail's tests.

Usage: dnsserver.py [--delay-ms N] ZONEFILE

Listens on 127.0.0.1, UDP and TCP, on one port it picks, and prints that
port on stdout as soon as both sockets listen: that line is the readiness
signal. Exits when stdin reaches end of file (so a crashed test does not
leave it behind) or when killed. Each query is logged on stderr as
"proto TYPE name" (the name lower-cased, with its final dot).

--delay-ms N answers every query N milliseconds after it arrived; queries
are handled in threads of their own, so a delay never holds up another
query.

The zone file has one item per line; '#' starts a comment.

  NAME TYPE DATA        a record; TYPE is A, AAAA, MX, CNAME or TXT:
                          example.test MX 10 mx1.example.test
                          example.test MX 0 .            (a Null MX)
                          mx1.example.test A 127.0.0.1
                          mx1.example.test AAAA ::1
                          alias.test CNAME real.test
                          example.test TXT some text
  NAME BEHAVIOUR        a behaviour for every query of NAME
  NAME TYPE BEHAVIOUR   a behaviour for the queries of that type only

Behaviours:
  SERVFAIL   answer SERVFAIL
  REFUSED    answer REFUSED
  NXDOMAIN   answer NXDOMAIN (with an SOA), whatever records NAME has
  DROP       never answer
  TRUNCATE   over UDP, answer with the TC bit set and no records, so that
             the client must ask again over TCP; over TCP, answer normally
             (an answer too large for UDP is truncated that way anyway)
  NOCHASE    when a query meets the CNAME at NAME, answer with the CNAME
             alone, without following it, without an SOA and without the
             RA bit: what an authoritative server does for a target
             outside its zones

Answers are built the way an authoritative server builds them: CNAME
chains inside the data are followed (the CNAME records, then the records of
the target), a name without records of the type asked for gets NODATA and a
name that does not exist (not even as the parent of another name) gets
NXDOMAIN, both with an SOA in the authority section. Answers have the AA
and RA bits set (the server stands in for a recursive cache such as
dnscache), except NOCHASE answers.
"""

import os
import socket
import struct
import sys
import threading
import time

from dnslib import AAAA, CNAME, EDNS0, MX, QTYPE, RCODE, RR, SOA, TXT, A, DNSRecord

BEHAVIOURS = {"SERVFAIL", "REFUSED", "NXDOMAIN", "DROP", "TRUNCATE", "NOCHASE"}
TTL = 300


def canon(name):
    name = name.lower()
    return name if name.endswith(".") else name + "."


class Zone:
    def __init__(self, text):
        self.records = {}  # name -> [(type, rdata)]
        self.behaviours = {}  # (name, type or None) -> behaviour
        for lineno, line in enumerate(text.splitlines(), 1):
            line = line.split("#", 1)[0].strip()
            if not line:
                continue
            words = line.split()
            try:
                self.add(words)
            except (ValueError, IndexError) as e:
                sys.exit("dnsserver: zone line %d: %r: %s" % (lineno, line, e))

    def add(self, words):
        name = canon(words[0])
        if len(words) == 2 and words[1].upper() in BEHAVIOURS:
            self.behaviours[(name, None)] = words[1].upper()
            return
        rtype = words[1].upper()
        if len(words) == 3 and words[2].upper() in BEHAVIOURS:
            if rtype not in QTYPE.reverse:
                raise ValueError("unknown type " + rtype)
            self.behaviours[(name, rtype)] = words[2].upper()
            return
        data = words[2:]
        if rtype == "A":
            rdata = A(data[0])
        elif rtype == "AAAA":
            rdata = AAAA(data[0])
        elif rtype == "MX":
            rdata = MX(data[1] if data[1] == "." else canon(data[1]), int(data[0]))
        elif rtype == "CNAME":
            rdata = CNAME(canon(data[0]))
        elif rtype == "TXT":
            rdata = TXT(" ".join(data))
        else:
            raise ValueError("unsupported type " + rtype)
        self.records.setdefault(name, []).append((rtype, rdata))

    def behaviour(self, name, qtype):
        return self.behaviours.get((name, qtype)) or self.behaviours.get((name, None))

    def exists(self, name):
        if name in self.records:
            return True
        # An empty non-terminal: the parent of a name with data exists.
        return any(other.endswith("." + name) for other in self.records)

    def soa(self, name):
        labels = name.rstrip(".").split(".")
        zone = labels[-1] + "." if labels[-1] else "."
        rdata = SOA("ns." + zone, "hostmaster." + zone, (1, 3600, 600, 86400, TTL))
        return RR(zone, QTYPE.SOA, rdata=rdata, ttl=TTL)

    def answer(self, request, proto):
        """The response to `request` (bytes), or None to stay silent.

        Over UDP, a response larger than the client can take (its EDNS
        payload size, else 512 bytes) is sent the way real servers send it:
        with the TC bit and no records, so that the client asks again over
        TCP."""
        response = self.build(request, proto)
        if response is None or proto != "udp":
            return response
        query = DNSRecord.parse(request)
        limit = max([512] + [rr.rclass for rr in query.ar if rr.rtype == QTYPE.OPT])
        if len(response) <= limit:
            return response
        reply = query.reply(ra=1, aa=1)
        reply.header.tc = 1
        return reply.pack()

    def build(self, request, proto):
        query = DNSRecord.parse(request)
        q = query.q
        qname = canon(str(q.qname))
        qtype = QTYPE.get(q.qtype)
        log("%s %s %s" % (proto, qtype, qname))
        reply = query.reply(ra=1, aa=1)
        if any(rr.rtype == QTYPE.OPT for rr in query.ar):
            reply.add_ar(EDNS0(udp_len=1232))
        behaviour = self.behaviour(qname, qtype)
        if behaviour == "DROP":
            return None
        if behaviour == "SERVFAIL":
            reply.header.rcode = RCODE.SERVFAIL
            return reply.pack()
        if behaviour == "REFUSED":
            reply.header.rcode = RCODE.REFUSED
            return reply.pack()
        if behaviour == "NXDOMAIN":
            reply.header.rcode = RCODE.NXDOMAIN
            reply.add_auth(self.soa(qname))
            return reply.pack()
        if behaviour == "TRUNCATE" and proto == "udp":
            reply.header.tc = 1
            return reply.pack()

        name = qname
        for _ in range(16):
            records = self.records.get(name, [])
            matching = [rd for (t, rd) in records if t == qtype]
            if matching:
                for rd in matching:
                    reply.add_answer(RR(name, QTYPE.reverse[qtype], rdata=rd, ttl=TTL))
                return reply.pack()
            cnames = [rd for (t, rd) in records if t == "CNAME"]
            if cnames and qtype != "CNAME":
                reply.add_answer(RR(name, QTYPE.CNAME, rdata=cnames[0], ttl=TTL))
                if self.behaviour(name, None) == "NOCHASE":
                    reply.header.ra = 0
                    return reply.pack()
                name = canon(str(cnames[0].label))
                continue
            if not self.exists(name):
                reply.header.rcode = RCODE.NXDOMAIN
            reply.add_auth(self.soa(name))
            return reply.pack()
        reply.header.rcode = RCODE.SERVFAIL  # a CNAME loop
        return reply.pack()


LOG_LOCK = threading.Lock()


def log(line):
    with LOG_LOCK:
        sys.stderr.write(line + "\n")
        sys.stderr.flush()


def later(delay, fn, *args):
    """Runs fn(*args) in a thread of its own after `delay` seconds."""

    def run():
        if delay:
            time.sleep(delay)
        try:
            fn(*args)
        except Exception as e:  # a bad query must not kill the server
            log("error %r" % (e,))

    threading.Thread(target=run, daemon=True).start()


def serve_udp(sock, zone, delay):
    def handle(data, peer):
        response = zone.answer(data, "udp")
        if response is not None:
            sock.sendto(response, peer)

    while True:
        data, peer = sock.recvfrom(65535)
        later(delay, handle, data, peer)


def recv_exact(conn, n):
    buf = b""
    while len(buf) < n:
        chunk = conn.recv(n - len(buf))
        if not chunk:
            return None
        buf += chunk
    return buf


def serve_tcp_connection(conn, zone, delay):
    send_lock = threading.Lock()

    def handle(data):
        response = zone.answer(data, "tcp")
        if response is not None:
            with send_lock:
                conn.sendall(struct.pack("!H", len(response)) + response)

    with conn:
        while True:
            head = recv_exact(conn, 2)
            if head is None:
                return
            data = recv_exact(conn, struct.unpack("!H", head)[0])
            if data is None:
                return
            later(delay, handle, data)
            # Keep the connection open while answers are pending.


def serve_tcp(sock, zone, delay):
    while True:
        conn, _ = sock.accept()
        threading.Thread(target=serve_tcp_connection, args=(conn, zone, delay), daemon=True).start()


def bind_pair():
    """A UDP and a TCP socket on the same free loopback port."""
    for _ in range(50):
        udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        udp.bind(("127.0.0.1", 0))
        port = udp.getsockname()[1]
        tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            tcp.bind(("127.0.0.1", port))
        except OSError:
            udp.close()
            tcp.close()
            continue
        tcp.listen(16)
        return udp, tcp, port
    sys.exit("dnsserver: no free port")


def main(argv):
    delay = 0.0
    args = argv[1:]
    if len(args) >= 2 and args[0] == "--delay-ms":
        delay = int(args[1]) / 1000.0
        args = args[2:]
    if len(args) != 1:
        sys.exit("usage: dnsserver.py [--delay-ms N] ZONEFILE")
    with open(args[0]) as f:
        zone = Zone(f.read())
    udp, tcp, port = bind_pair()
    threading.Thread(target=serve_udp, args=(udp, zone, delay), daemon=True).start()
    threading.Thread(target=serve_tcp, args=(tcp, zone, delay), daemon=True).start()
    sys.stdout.write("%d\n" % port)
    sys.stdout.flush()
    # Until stdin closes (the test ended, or died).
    while sys.stdin.buffer.read(4096):
        pass
    os._exit(0)


if __name__ == "__main__":
    main(sys.argv)
