"""``python -m dlasearch.cli``: the same as the ``dlasearch`` command."""
import sys

from dlasearch.cli import main

sys.exit(main())
