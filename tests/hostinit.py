"""PID 1 of a hostfarm test host: private mounts and hostname, then reap children.

Run by tests/hostfarm.py as ``ip netns exec NS unshare --uts --mount --pid --fork
--mount-proc python3 hostinit.py HOSTNAME MOUNT...``, where MOUNT is a directory to cover
with a tmpfs, or ``overlay=DIR:UPPER:WORK`` for a copy-on-write overlay of DIR.
Stdlib only; it runs under /usr/bin/python3 because /root (and so pyenv) is hidden inside hosts.
"""
import ctypes
import os
import signal
import socket
import sys

MS_NOSUID = 2
MS_NODEV = 4


def mount_tmpfs(libc, path):
    """Mount a fresh tmpfs over path (hides the machine's files there from this host)."""
    if libc.mount(b"tmpfs", path.encode(), b"tmpfs", MS_NOSUID | MS_NODEV, b"mode=0755") != 0:
        err = ctypes.get_errno()
        raise OSError(err, "mount tmpfs on %s: %s" % (path, os.strerror(err)))


def mount_overlay(libc, path, upper, work):
    """Copy-on-write view of path: this host's writes land in upper, the machine's stay."""
    opts = "lowerdir=%s,upperdir=%s,workdir=%s" % (path, upper, work)
    if libc.mount(b"overlay", path.encode(), b"overlay", 0, opts.encode()) != 0:
        err = ctypes.get_errno()
        raise OSError(err, "mount overlay on %s: %s" % (path, os.strerror(err)))


def main():
    hostname, mounts = sys.argv[1], sys.argv[2:]
    libc = ctypes.CDLL(None, use_errno=True)
    socket.sethostname(hostname)
    for spec in mounts:
        if spec.startswith("overlay="):
            mount_overlay(libc, *spec[len("overlay="):].split(":"))
        else:
            mount_tmpfs(libc, spec)
    os.chmod("/tmp", 0o1777)
    os.chmod("/var/tmp", 0o1777)
    # SIGTERM to PID 1 of a PID namespace is ignored unless handled: exit on it, which makes
    # the kernel kill everything else in this host.
    signal.signal(signal.SIGTERM, lambda *_: os._exit(0))
    # Orphans of this host are re-parented to us: reap them. SIGCHLD is blocked and waited
    # for, so a child dying between two checks is never missed.
    signal.pthread_sigmask(signal.SIG_BLOCK, [signal.SIGCHLD])
    sys.stdout.write("ready\n")
    sys.stdout.flush()
    while True:
        try:
            while os.waitpid(-1, os.WNOHANG)[0] > 0:
                pass
        except ChildProcessError:
            pass
        signal.sigtimedwait([signal.SIGCHLD], 60)


if __name__ == "__main__":
    main()
