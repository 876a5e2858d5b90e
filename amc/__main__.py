"""``python -m amc``: the command line; a Ctrl-C even while it imports is one line and exit 130."""
import sys

try:
    from amc.cli import main
except KeyboardInterrupt:
    sys.stderr.write("error: interrupted\n")
    raise SystemExit(130) from None

raise SystemExit(main())
