"""The XML layer: codecs, guarded parsing, payload classes, XSD, envelope, history, repair.

No I/O and no import of the runtime or the backends (tests/test_layers.py pins it).
"""
