"""Command-line entry points of the model library (``reid-eval``, ``reid-embed``)."""
