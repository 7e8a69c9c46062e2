"""The benches: each a module run as ``python -m bench.<name>`` from the project root."""
