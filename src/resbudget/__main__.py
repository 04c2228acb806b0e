"""``python -m resbudget``: the same as the ``resbudget`` command."""

import sys

from .cli import main

sys.exit(main())
