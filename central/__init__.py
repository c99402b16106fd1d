"""central: a fleet monitor that needs nothing on a host but sshd and Python."""

__version__ = "0.1.0"
