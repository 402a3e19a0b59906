"""DL/T 645-2007, the Chinese multi-function meter protocol on RS-485: frames, identifiers, typed messages.

Pure: bytes in, typed values out, and back; no I/O, no clock. See docs/dlt645.md.
"""
