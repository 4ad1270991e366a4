"""premd's version, reported by every component's micro service."""

VERSION = "0.1.0"
