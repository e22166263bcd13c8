#!/usr/bin/env python3
"""Process lifecycle of `kestrel run`: signals, reboot on reset, the
terminal restored after raw mode, Ctrl-A x, and the pty/socket consoles.
Ends with "N passed, N failed"."""
import os, pty, re, select, signal, socket, subprocess, sys, tempfile, termios, time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
K = os.environ.get("KESTREL", os.path.join(ROOT, "build/kestrel"))
G = os.environ.get("GUESTS", os.path.join(ROOT, "build/guests"))
results = []
# Inside tools/kvmhost's outer VM every guest runs under emulation: the
# same behaviour, more slowly, so every time limit stretches.
SLOW = 10 if os.environ.get("KESTREL_KVMHOST_INSIDE") else 1


def check(name, ok, detail=""):
    results.append(ok)
    print(("PASS " if ok else "FAIL ") + name + ("" if ok else ": " + detail), flush=True)


def wait_for(pred, timeout):
    end = time.time() + timeout
    while time.time() < end:
        if pred():
            return True
        time.sleep(0.05)
    return False


def read_until(fd, pattern, timeout):
    buf = b""
    end = time.time() + timeout
    while time.time() < end:
        r, _, _ = select.select([fd], [], [], 0.1)
        if r:
            try:
                chunk = os.read(fd, 4096)
            except OSError:
                break
            if not chunk:
                break
            buf += chunk
            if re.search(pattern, buf):
                return buf
    return buf


def test_signal(sig):
    with tempfile.TemporaryDirectory() as d:
        log = os.path.join(d, "serial.log")
        p = subprocess.Popen([K, "run", "--kernel", G + "/idle.elf", "--cmdline", "seconds=0",
                              "--serial", "file=" + log], stdin=subprocess.DEVNULL,
                             stderr=subprocess.PIPE)
        up = wait_for(lambda: os.path.exists(log) and b"idle:" in open(log, "rb").read(), 10 * SLOW)
        t = time.time()
        p.send_signal(sig)
        try:
            _, err = p.communicate(timeout=5 * SLOW)
        except subprocess.TimeoutExpired:
            p.kill()
            check("signal %d" % sig, False, "did not exit within 5 s")
            return
        took = time.time() - t
        name = "SIG%s stops a running guest" % signal.Signals(sig).name[3:]
        check(name, up and p.returncode == 0 and b"terminating on signal %d" % sig in err and took < 2 * SLOW,
              "up=%s status=%s took=%.2fs stderr=%r" % (up, p.returncode, took, err[:200]))


def test_reboot():
    with tempfile.TemporaryDirectory() as d:
        log = os.path.join(d, "serial.log")
        p = subprocess.Popen([K, "run", "-v", "--kernel", G + "/reset.elf", "--serial", "file=" + log],
                             stdin=subprocess.DEVNULL, stderr=subprocess.PIPE)
        # Without --no-reboot every reset rebuilds the VM and the guest runs again.
        ok = wait_for(lambda: os.path.exists(log) and open(log, "rb").read().count(b"reset: boot") >= 3, 10 * SLOW)
        p.send_signal(signal.SIGTERM)
        _, err = p.communicate(timeout=5 * SLOW)
        boots = open(log, "rb").read().count(b"reset: boot") if os.path.exists(log) else 0
        check("guest reset reboots the VM", ok and p.returncode == 0 and b"rebooting" in err,
              "boots=%d status=%s" % (boots, p.returncode))


def spawn_on_pty(args):
    pid, fd = pty.fork()
    if pid == 0:
        os.execv(K, [K] + args)
    return pid, fd


def test_terminal_restored_and_ctrl_a_x():
    pid, fd = spawn_on_pty(["run", "--kernel", G + "/idle.elf", "--cmdline", "seconds=0"])
    before = None
    # The child's terminal starts cooked; sample it before raw mode kicks in is
    # racy, so compare against a known cooked property instead: ICANON|ECHO.
    out = read_until(fd, rb"idle:", 10 * SLOW)
    during = termios.tcgetattr(fd)
    raw = not (during[3] & termios.ICANON) and not (during[3] & termios.ECHO)
    os.write(fd, b"\x01x")  # Ctrl-A x
    end = time.time() + 5 * SLOW
    status = None
    while time.time() < end:
        wpid, st = os.waitpid(pid, os.WNOHANG)
        if wpid:
            status = os.waitstatus_to_exitcode(st)
            break
        read_until(fd, rb"$^", 0.1)
    after = termios.tcgetattr(fd) if status is not None else None
    cooked = after is not None and bool(after[3] & termios.ICANON) and bool(after[3] & termios.ECHO)
    os.close(fd)
    if status is None:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
    check("stdio terminal is raw while the guest runs", raw and b"idle:" in out, "out=%r" % out[-200:])
    check("Ctrl-A x quits with status 0", status == 0, "status=%s" % status)
    check("terminal restored after exit", cooked, "lflag after=%s" % (after[3] if after else None))
    del before


def test_terminal_restored_on_sigterm():
    pid, fd = spawn_on_pty(["run", "--kernel", G + "/idle.elf", "--cmdline", "seconds=0"])
    read_until(fd, rb"idle:", 10 * SLOW)
    os.kill(pid, signal.SIGTERM)
    _, st = os.waitpid(pid, 0)
    after = termios.tcgetattr(fd)
    os.close(fd)
    check("terminal restored after SIGTERM",
          os.waitstatus_to_exitcode(st) == 0 and bool(after[3] & termios.ICANON),
          "status=%s lflag=%s" % (os.waitstatus_to_exitcode(st), after[3]))


def test_pty_backend():
    p = subprocess.Popen([K, "run", "--kernel", G + "/idle.elf", "--cmdline", "seconds=0",
                          "--serial", "pty"], stdin=subprocess.DEVNULL, stderr=subprocess.PIPE)
    line = p.stderr.readline().decode()
    m = re.search(r"serial console on (/dev/pts/\d+)", line)
    got = b""
    if m:
        fd = os.open(m.group(1), os.O_RDWR | os.O_NOCTTY)
        got = read_until(fd, rb"idle:", 10 * SLOW)
        os.close(fd)
    p.send_signal(signal.SIGTERM)
    p.wait(timeout=5 * SLOW)
    check("--serial pty names its pty and carries the console", bool(m) and b"idle:" in got,
          "stderr=%r got=%r" % (line, got[-100:]))


def test_socket_backend():
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "console.sock")
        p = subprocess.Popen([K, "run", "--kernel", G + "/idle.elf", "--cmdline", "seconds=0",
                              "--serial", "socket=" + path], stdin=subprocess.DEVNULL,
                             stderr=subprocess.PIPE)
        wait_for(lambda: os.path.exists(path), 5 * SLOW)
        got = b""
        try:
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.connect(path)
            # Output before the client connected is dropped, so poke the
            # guest-independent path: just check the connection works and
            # the VMM survives the client leaving.
            s.close()
            time.sleep(0.2)
            got = b"connected"
        except OSError as e:
            got = repr(e).encode()
        alive = p.poll() is None
        p.send_signal(signal.SIGTERM)
        p.wait(timeout=5 * SLOW)
        check("--serial socket accepts a client and survives its departure",
              got == b"connected" and alive and not os.path.exists(path),
              "got=%r alive=%s" % (got, alive))


def test_serial_input():
    # 600 bytes at once: far more than the 16-byte FIFO, so input must be
    # held back and resumed as the guest drains it, with nothing lost.
    pid, fd = spawn_on_pty(["run", "--kernel", G + "/echo.elf"])
    read_until(fd, rb"echo: ready", 10 * SLOW)
    text = (b"the quick brown fox jumps over the lazy dog " * 14)[:594] + b" [end]"
    os.write(fd, text[:300])
    time.sleep(0.2)
    os.write(fd, text[300:])
    got = read_until(fd, re.escape(b"[END]"), 15 * SLOW)
    os.write(fd, b"~")
    tail = read_until(fd, rb"receive interrupts", 10 * SLOW)
    _, st = os.waitpid(pid, 0)
    os.close(fd)
    check("serial input: 600 bytes echoed in order through the FIFO, with RX interrupts",
          text.upper() in got and os.waitstatus_to_exitcode(st) == 33,
          "status=%s got %d bytes, tail=%r" % (os.waitstatus_to_exitcode(st), len(got), tail[-80:]))


def test_triple_fault_diagnostic():
    p = subprocess.run([K, "run", "--kernel", G + "/triplefault.elf", "--serial", "off"],
                       stdin=subprocess.DEVNULL, capture_output=True, timeout=30 * SLOW)
    err = p.stderr.decode()
    need = ["triple fault", "RIP", "CR0", "CR3", "CR4", "EFER", "code at RIP"]
    missing = [n for n in need if n not in err]
    check("triple fault: status 4 and a diagnostic", p.returncode == 4 and not missing,
          "status=%d missing=%s" % (p.returncode, missing))


test_signal(signal.SIGTERM)
test_signal(signal.SIGINT)
test_reboot()
test_terminal_restored_and_ctrl_a_x()
test_terminal_restored_on_sigterm()
test_pty_backend()
test_socket_backend()
test_serial_input()
test_triple_fault_diagnostic()
print("lifecycle: %d passed, %d failed" % (results.count(True), results.count(False)))
