#!/usr/bin/python3
"""An aiosmtpd SMTP server on loopback for the qmail-remote tests.

Usage: smtpd.py [options] DIR

Listens on --host (default 127.0.0.1) and --port (default 0: the kernel
picks), and prints the port on stdout once it listens: that line is the
readiness signal. Exits when stdin reaches end of file (so that a test that
died does not leave it behind) or when killed. If the address is taken it
exits 98 without printing anything.

Options:
  --host IP            the address to listen on (IPv4 or IPv6)
  --port N             the port (0: any)
  --cert PEM --key PEM offer STARTTLS with this certificate and key
  --client-ca PEM      ask for a client certificate and require one that
                       chains to this CA (the handshake fails otherwise)
  --tls12              TLS 1.2 at most (a missing client certificate then
                       fails the handshake itself, not the first read after)
  --size N             announce SIZE N and refuse bigger messages (default:
                       no SIZE, no limit)
  --smtputf8           announce SMTPUTF8 (and accept UTF-8 addresses)
  --no-8bitmime        do not announce 8BITMIME
  --pipelining         announce PIPELINING (aiosmtpd handles pipelined
                       commands in order anyway)
  --starttls-454       announce STARTTLS but answer it with 454
  --inject-after-220   answer STARTTLS with "220 ..." and, in the same
                       write, a plaintext "250 injected" line (a STARTTLS
                       injection attempt against the client)

What it stores in DIR:
  log                  one line per event of every session, in order:
                       "connect", "> COMMAND LINE" for each command,
                       "< REPLY" for each reply line, "tls VERSION CIPHER"
                       once a handshake is done, "stored NAME"
  NAME.eml             the exact bytes of each accepted message as
                       received after un-stuffing the dots (CRLF line ends)
  NAME.env             its envelope, one "key: value" per line: helo,
                       mail_from, mail_option (each), rcpt (each), tls
                       ("VERSION CIPHER" or "none"), client_cert (the
                       subject's CN, or "none")
Both files are written under a temporary name and renamed, before the
reply to the final dot is sent.

Behaviour by address (the local part, case-insensitive):
  MAIL FROM:<reject...>  550 5.7.1      MAIL FROM:<defer...>  451 4.3.0
  RCPT TO:<reject...>    550 5.1.1      RCPT TO:<defer...>    451 4.2.0
  a recipient dotreject...  554 5.6.0 after the final dot (not stored)
  a recipient dotdefer...   451 4.3.0 after the final dot (not stored)
"""

import argparse
import asyncio
import errno
import itertools
import os
import socket
import ssl
import sys
import threading

from aiosmtpd.smtp import SMTP

COUNTER = itertools.count(1)


class Store:
    def __init__(self, directory):
        self.dir = directory
        self.log_file = open(os.path.join(directory, "log"), "a", buffering=1, encoding="utf-8", errors="backslashreplace")

    def log(self, line):
        self.log_file.write(line.replace("\r", "\\r").replace("\n", "\\n") + "\n")

    def write(self, name, data):
        tmp = os.path.join(self.dir, ".tmp." + name)
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.rename(tmp, os.path.join(self.dir, name))


def local_part(address):
    address = address or ""
    return address.rsplit("@", 1)[0].lower().lstrip('"')


def tls_of(session):
    extra = session.ssl
    if not extra:
        return "none", "none"
    obj = extra.get("ssl_object")
    cipher = obj.cipher()[0] if obj and obj.cipher() else "?"
    tls = "%s %s" % (obj.version() if obj else "?", cipher)
    cn = "none"
    cert = obj.getpeercert() if obj else None
    if cert:
        for rdn in cert.get("subject", ()):
            for key, value in rdn:
                if key == "commonName":
                    cn = value
    return tls, cn


class Handler:
    def __init__(self, store):
        self.store = store

    async def handle_MAIL(self, server, session, envelope, address, options):
        lp = local_part(address)
        if lp.startswith("reject"):
            return "550 5.7.1 sender rejected by the test peer"
        if lp.startswith("defer"):
            return "451 4.3.0 sender deferred by the test peer"
        envelope.mail_from = address
        envelope.mail_options.extend(options)
        return "250 2.1.0 Sender ok"

    async def handle_RCPT(self, server, session, envelope, address, options):
        lp = local_part(address)
        if lp.startswith("reject"):
            return "550 5.1.1 no such user here"
        if lp.startswith("defer"):
            return "451 4.2.0 mailbox busy, try later"
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(options)
        return "250 2.1.5 Recipient ok"

    async def handle_DATA(self, server, session, envelope):
        lps = [local_part(r) for r in envelope.rcpt_tos]
        if any(lp.startswith("dotreject") for lp in lps):
            return "554 5.6.0 message refused by the test peer"
        if any(lp.startswith("dotdefer") for lp in lps):
            return "451 4.3.0 message deferred by the test peer"
        name = "%d.%d" % (os.getpid(), next(COUNTER))
        tls, cn = tls_of(session)
        env = ["helo: %s" % (session.host_name,), "mail_from: %s" % (envelope.mail_from,)]
        env += ["mail_option: %s" % (o,) for o in envelope.mail_options]
        env += ["rcpt: %s" % (r,) for r in envelope.rcpt_tos]
        env += ["tls: %s" % (tls,), "client_cert: %s" % (cn,)]
        self.store.write(name + ".eml", envelope.original_content)
        self.store.write(name + ".env", ("\n".join(env) + "\n").encode("utf-8", "backslashreplace"))
        self.store.log("stored " + name)
        return "250 2.0.0 Ok: queued as " + name


def make_server_class(args, store):
    class TestSMTP(SMTP):
        # Lines of any length (the tests send 10 KiB lines).
        line_length_limit = 1 << 24

        def connection_made(self, transport):
            tls_before = self._original_transport is not None
            super().connection_made(transport)
            if not tls_before:
                store.log("connect")
            else:
                store.log("tls %s" % (tls_of(self.session)[0],))

        async def push(self, status):
            text = status.decode("utf-8", "backslashreplace") if isinstance(status, bytes) else status
            store.log("< " + text)
            await super().push(status)

        async def _handle_client(self):
            # Wraps the reader so that every command line is logged as read.
            reader = self._reader
            original = reader.readuntil

            async def readuntil(separator=b"\n"):
                line = await original(separator)
                if not getattr(self, "_in_data", False):
                    store.log("> " + line.decode("utf-8", "backslashreplace").rstrip("\r\n"))
                return line

            reader.readuntil = readuntil
            await super()._handle_client()

        async def smtp_DATA(self, arg):
            self._in_data = True
            try:
                await super().smtp_DATA(arg)
            finally:
                self._in_data = False

        async def smtp_EHLO(self, hostname):
            if not hostname:
                return await super().smtp_EHLO(hostname)
            # Build the reply ourselves: aiosmtpd's EHLO has no PIPELINING
            # and announces AUTH.
            self._set_rset_state()
            self.session.extended_smtp = True
            self.session.host_name = hostname
            lines = [self.hostname]
            if args.pipelining:
                lines.append("PIPELINING")
            if self.data_size_limit:
                lines.append("SIZE %d" % self.data_size_limit)
            if not args.no_8bitmime:
                lines.append("8BITMIME")
            if self.enable_SMTPUTF8:
                lines.append("SMTPUTF8")
            if self.tls_context and not self._tls_protocol:
                lines.append("STARTTLS")
            for i, line in enumerate(lines):
                await self.push("250%s%s" % ("-" if i + 1 < len(lines) else " ", line))

        async def smtp_STARTTLS(self, arg):
            if args.starttls_454:
                return await self.push("454 4.7.0 TLS not available now")
            if args.inject_after_220 and not arg and self.tls_context:
                # The 220 and an injected reply in one write.
                store.log("< 220 Ready to start TLS + injected 250")
                self._writer.write(b"220 Ready to start TLS\r\n250 injected\r\n")
                await self._writer.drain()
                real_push = self.push

                async def quiet_push(status):
                    self.push = real_push  # only the first 220 is swallowed

                self.push = quiet_push
            return await super().smtp_STARTTLS(arg)

    return TestSMTP


def main():
    p = argparse.ArgumentParser()
    p.add_argument("dir")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--cert")
    p.add_argument("--key")
    p.add_argument("--client-ca")
    p.add_argument("--tls12", action="store_true")
    p.add_argument("--size", type=int, default=0)
    p.add_argument("--pipelining", action="store_true")
    p.add_argument("--smtputf8", action="store_true")
    p.add_argument("--no-8bitmime", action="store_true")
    p.add_argument("--starttls-454", action="store_true")
    p.add_argument("--inject-after-220", action="store_true")
    args = p.parse_args()

    store = Store(args.dir)
    tls_context = None
    if args.cert:
        tls_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        tls_context.load_cert_chain(args.cert, args.key)
        if args.client_ca:
            tls_context.verify_mode = ssl.CERT_REQUIRED
            tls_context.load_verify_locations(args.client_ca)
        if args.tls12:
            tls_context.maximum_version = ssl.TLSVersion.TLSv1_2

    family = socket.AF_INET6 if ":" in args.host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((args.host, args.port))
    except OSError as e:
        if e.errno in (errno.EADDRINUSE, errno.EADDRNOTAVAIL):
            sys.stderr.write("smtpd.py: cannot bind %s:%d: %s\n" % (args.host, args.port, e))
            os._exit(98)
        raise
    sock.listen(64)
    port = sock.getsockname()[1]

    server_class = make_server_class(args, store)
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)

    def factory():
        return server_class(
            Handler(store),
            hostname="peer.test",
            data_size_limit=args.size or None,
            tls_context=tls_context,
            enable_SMTPUTF8=args.smtputf8,
            loop=loop,
        )

    loop.run_until_complete(loop.create_server(factory, sock=sock))

    def watch_stdin():
        while sys.stdin.buffer.read(4096):
            pass
        os._exit(0)

    threading.Thread(target=watch_stdin, daemon=True).start()
    sys.stdout.write("%d\n" % port)
    sys.stdout.flush()
    loop.run_forever()


if __name__ == "__main__":
    main()
