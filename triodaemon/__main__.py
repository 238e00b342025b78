"""``python -m triodaemon``: the same as the ``triodaemon`` command."""

import sys

from ._cli import main

sys.exit(main())
