"""A small shop integrated with OpenPSE through the SDK (see README.md)."""
