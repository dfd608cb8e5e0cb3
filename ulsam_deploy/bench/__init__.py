"""``bench``: parity and latency of every backend on identical inputs, and the reports."""
