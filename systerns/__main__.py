"""``python -m systerns`` runs the ``systerns`` command."""

import sys

from systerns.cli.main import main

sys.exit(main())
