"""The benchmark's machinery: one module per concern, in the order data flows.

config -> archive -> deflate -> blocks -> parse -> transform -> store -> pipelines
-> peers, parity -> clock, worker -> harness -> results -> report -> cli. Each module
imports only those before it (tests/test_layers.py checks it); main.py tells the story.
"""

import os

# Polars allocates through jemalloc, whose arenas (several per core by default) each keep
# pages freed by their threads for reuse; one arena shares them (docs/design.md, Memory).
# Set here, before any module of the package loads Polars, and inherited by the measured
# workers; a user's own setting wins.
os.environ.setdefault("_RJEM_MALLOC_CONF", "narenas:1")
