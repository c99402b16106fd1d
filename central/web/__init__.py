"""The HTTP side of central: JSON API and HTML pages over central.service."""
