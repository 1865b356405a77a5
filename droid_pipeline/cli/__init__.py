"""Command-line entry points: argument plumbing and one module per command."""
