#!/usr/bin/env python3
"""The host end of tests/linux/test-linux-net.sh's transfers.

    net-peer.py --dir DIR --data FILE [--down-bytes N] [--listen ADDR]
                [--udp] [--fwd HOSTPORT --log LOGFILE]

Listens on ADDR (default 127.0.0.1), ephemeral ports, and writes them to
DIR/ports as shell assignments once every socket is bound (UP=, DOWN=,
UDP=); then serves until killed:

  UP    each connection: everything read until EOF goes to DIR/up-N.bin;
        then one line "up N CLIENT BYTES SHA256 SECONDS" in DIR/results and
        the connection is closed (the guest's nc exits on that close)
  DOWN  each connection: FILE is sent whole (or its first N bytes), then
        our side is shut down and the connection closed when the guest closes;
        "down N CLIENT BYTES SECONDS" when the last byte has been handed to
        the kernel
  UDP   (--udp) every datagram appended to DIR/udp, its sender and size as
        "ADDR:PORT SIZE" to DIR/udp.src (netconsole)
  FWD   (--fwd) each time LOGFILE gains a line "KNET-FWD-READY ...", connect
        to 127.0.0.1:HOSTPORT (Kestrel's hostfwd), read until EOF into
        DIR/fwd-N.bin and write "fwd N BYTES SHA256 SECONDS ATTEMPTS"; a
        connection that brings nothing (slirp reached no listener yet) is
        retried, up to 25 attempts

SECONDS runs from the accept/connect to EOF, for the throughput.
"""
import argparse
import hashlib
import os
import socket
import threading
import time

ap = argparse.ArgumentParser()
ap.add_argument("--dir", required=True)
ap.add_argument("--data", required=True)
ap.add_argument("--down-bytes", type=int)
ap.add_argument("--listen", default="127.0.0.1")
ap.add_argument("--udp", action="store_true")
ap.add_argument("--fwd", type=int)
ap.add_argument("--log")
a = ap.parse_args()

lock = threading.Lock()


def result(line):
    with lock, open(os.path.join(a.dir, "results"), "a") as f:
        f.write(line + "\n")


def listener():
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((a.listen, 0))
    s.listen(4)
    return s


def receive(sock, path):
    """Read sock until EOF into path; (bytes, sha256, seconds)."""
    h, n, t0 = hashlib.sha256(), 0, time.monotonic()
    with open(path, "wb") as f:
        while True:
            b = sock.recv(1 << 20)
            if not b:
                break
            h.update(b)
            f.write(b)
            n += len(b)
    return n, h.hexdigest(), time.monotonic() - t0


def serve_up(s):
    for i in range(1, 1000):
        c, peer = s.accept()
        n, sha, secs = receive(c, os.path.join(a.dir, "up-%d.bin" % i))
        result("up %d %s %d %s %.3f" % (i, peer[0], n, sha, secs))
        c.close()


def serve_down(s):
    for i in range(1, 1000):
        c, peer = s.accept()
        t0, n = time.monotonic(), 0
        left = a.down_bytes if a.down_bytes is not None else os.path.getsize(a.data)
        try:
            with open(a.data, "rb") as f:
                while left > 0:
                    b = f.read(min(left, 1 << 20))
                    if not b:
                        break
                    c.sendall(b)
                    n += len(b)
                    left -= len(b)
            c.shutdown(socket.SHUT_WR)
            while c.recv(4096):  # the guest's nc closes after our EOF
                pass
        except OSError:
            pass
        result("down %d %s %d %.3f" % (i, peer[0], n, time.monotonic() - t0))
        c.close()


def serve_udp(s):
    with open(os.path.join(a.dir, "udp"), "ab", buffering=0) as f, \
            open(os.path.join(a.dir, "udp.src"), "a", buffering=1) as src:
        while True:
            d, peer = s.recvfrom(65536)
            f.write(d)
            src.write("%s:%d %d\n" % (peer[0], peer[1], len(d)))


def serve_fwd():
    done = 0
    while True:
        time.sleep(0.2)
        try:
            with open(a.log, "rb") as f:
                ready = f.read().count(b"KNET-FWD-READY ")
        except OSError:
            continue
        while done < ready:
            done += 1
            for attempt in range(25):
                try:
                    c = socket.create_connection(("127.0.0.1", a.fwd), timeout=120)
                    n, sha, secs = receive(c, os.path.join(a.dir, "fwd-%d.bin" % done))
                    c.close()
                except OSError:
                    n = 0
                if n:
                    break
                time.sleep(0.4)
            else:
                n, sha, secs = 0, "-", 0.0
            result("fwd %d %d %s %.3f %d" % (done, n, sha, secs, attempt + 1))


up, down = listener(), listener()
threads = [threading.Thread(target=serve_up, args=(up,)),
           threading.Thread(target=serve_down, args=(down,))]
ports = "UP=%d\nDOWN=%d\n" % (up.getsockname()[1], down.getsockname()[1])
if a.udp:
    u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    u.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    u.bind((a.listen, 0))
    threads.append(threading.Thread(target=serve_udp, args=(u,)))
    ports += "UDP=%d\n" % u.getsockname()[1]
if a.fwd:
    threads.append(threading.Thread(target=serve_fwd))
for t in threads:
    t.daemon = True
    t.start()
with open(os.path.join(a.dir, "ports.tmp"), "w") as f:
    f.write(ports)
os.rename(os.path.join(a.dir, "ports.tmp"), os.path.join(a.dir, "ports"))
while True:
    time.sleep(3600)
