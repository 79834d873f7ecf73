"""``python3 -m harness.stack up|down|status|logs|fetch`` (see harness.stack.cli)."""

import sys

from harness.stack.cli import main

sys.exit(main())
