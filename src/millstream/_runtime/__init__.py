"""Executors of the logical plan. Private: use ``Flow.run`` or the CLI."""
