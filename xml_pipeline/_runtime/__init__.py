"""The moving parts: the pump and its jobs, the registry, the process pool and its workers.

The runtime never reads organism.yaml (tests/test_layers.py pins it).
"""
