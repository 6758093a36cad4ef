"""``python -m querent``: the ``querent`` command."""

import sys

from querent.cli import main

sys.exit(main())
