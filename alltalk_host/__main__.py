"""``python -m alltalk_host``: the ``alltalk-host`` command, for where its script is not on PATH."""

from .commands.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
