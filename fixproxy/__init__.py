"""fixproxy: an inline FIX-protocol security proxy."""

__version__ = "0.1.0"
