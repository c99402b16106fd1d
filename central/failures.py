"""What went wrong reaching a host: exceptions from SSH and the network as classified PollErrors.

The reasons themselves (what each means, the status it gives) are central.model.REASONS.
"""
from __future__ import annotations

import asyncio

import asyncssh

from .model import AUTH_FAILED, HOST_CERT_INVALID, HOST_KEY_MISMATCH, TIMEOUT, UNREACHABLE, PollError


def classify(exc: BaseException) -> PollError:
    """Map an exception from connecting to a classified PollError."""
    if isinstance(exc, PollError):
        return exc
    if isinstance(exc, asyncssh.HostKeyNotVerifiable) and ("Certificate" in exc.reason or "CA key" in exc.reason):
        # asyncssh's words for a certificate it refuses (expired, principal mismatch, foreign CA)
        return PollError(HOST_CERT_INVALID, f"host certificate refused ({exc.reason})")
    if isinstance(exc, asyncssh.HostKeyNotVerifiable):
        return PollError(HOST_KEY_MISMATCH, f"host key does not match the pinned key ({exc.reason})")
    if isinstance(exc, asyncssh.PermissionDenied):
        return PollError(AUTH_FAILED, f"SSH authentication failed: {exc.reason}")
    if isinstance(exc, (asyncio.TimeoutError, TimeoutError)):
        return PollError(TIMEOUT, "SSH connection timed out")
    if isinstance(exc, asyncssh.DisconnectError):
        return PollError(UNREACHABLE, f"SSH disconnected: {exc.reason}")
    if isinstance(exc, ConnectionRefusedError):
        return PollError(UNREACHABLE, "connection refused (is sshd running?)")
    if isinstance(exc, OSError):
        return PollError(UNREACHABLE, exc.strerror or str(exc) or type(exc).__name__)
    if isinstance(exc, asyncssh.Error):
        return PollError(UNREACHABLE, f"SSH error: {exc.reason}")
    return PollError(UNREACHABLE, f"{type(exc).__name__}: {exc}")
