"""``python -m memguard``: the ``memguard`` command line."""

import sys

from memguard.integrations.cli import main

sys.exit(main())
