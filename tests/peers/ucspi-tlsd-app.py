#!/usr/bin/python3
"""A UCSPI-TLS application for the ucspi-tlsd integration tests
(tests/tests/ucspi_tlsd.rs).

usage: ucspi-tlsd-app.py MODE RESULTFILE

MODE
  decline  close SSLCTLFD, then answer one plaintext line on fds 0/1
           with "plain:" and the line.
  y, Y     write the byte on SSLCTLFD (for Y, read the information back
           until EOF), then, through the TLS pipes, send three report
           lines and echo everything until EOF:
             INFO <hex of the information record, or - for y>
             ENV <json: the environment variables of interest>
             ENGINE <uid> <gid> of the TLS engine process
  x        write an invalid control byte.
  hold     write Y and wait for the control socket to close.

In every mode the application then waits for the TLS engine (its child,
since ucspi-tlsd's parent process execs into the application) and writes
"exit N MS" to RESULTFILE: N is the engine's exit status, MS the
milliseconds from the control byte (or from the start) to the engine's end.
"""

import json
import os
import sys
import time


def engine_pid():
    me = str(os.getpid())
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        # The command may contain spaces: fields start after the last ')'.
        fields = stat[stat.rindex(")") + 2:].split()
        if fields[1] == me:
            return int(entry)
    raise SystemExit("no engine child found")


def ids(pid):
    uid = gid = None
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("Uid:"):
                uid = int(line.split()[1])
            elif line.startswith("Gid:"):
                gid = int(line.split()[1])
    return uid, gid


def write_all(fd, data):
    while data:
        n = os.write(fd, data)
        data = data[n:]


def read_all(fd):
    out = b""
    while True:
        chunk = os.read(fd, 65536)
        if not chunk:
            return out
        out += chunk


def main():
    mode, result = sys.argv[1], sys.argv[2]
    ctl = int(os.environ["SSLCTLFD"])
    rfd = int(os.environ["SSLREADFD"])
    wfd = int(os.environ["SSLWRITEFD"])
    engine = engine_pid()
    started = time.monotonic()

    if mode == "decline":
        os.close(ctl)
        line = b""
        while not line.endswith(b"\n"):
            chunk = os.read(0, 1)
            if not chunk:
                break
            line += chunk
        write_all(1, b"plain:" + line)
    elif mode in ("y", "Y"):
        try:
            started = time.monotonic()
            write_all(ctl, mode.encode())
            info = read_all(ctl) if mode == "Y" else None
        except OSError:
            info = b""
        os.close(ctl)
        uid, gid = ids(engine)
        interesting = {
            k: v
            for k, v in os.environ.items()
            if k.startswith(("CERTFILE", "KEYFILE", "CA", "TLS_", "SSL"))
        }
        report = "INFO %s\nENV %s\nENGINE %d %d\n" % (
            "-" if info is None else info.hex(),
            json.dumps(interesting, sort_keys=True),
            uid,
            gid,
        )
        try:
            write_all(wfd, report.encode())
            while True:
                data = os.read(rfd, 65536)
                if not data:
                    break
                write_all(wfd, data)
        except OSError:
            pass
        os.close(wfd)
        os.close(rfd)
    elif mode == "x":
        write_all(ctl, b"x")
    elif mode == "hold":
        started = time.monotonic()
        write_all(ctl, b"Y")
        read_all(ctl)
    else:
        raise SystemExit("unknown mode " + mode)

    _, status = os.waitpid(engine, 0)
    code = os.waitstatus_to_exitcode(status)
    elapsed = int((time.monotonic() - started) * 1000)
    with open(result + ".tmp", "w") as f:
        f.write("exit %d %d\n" % (code, elapsed))
    os.rename(result + ".tmp", result)


main()
