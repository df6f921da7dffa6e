"""The ``alltalk-host`` command and its subcommands. See docs/architecture.md."""
