"""``python -m installer add-node ...``: the installer's commands without the rest of ``dvic``."""

import sys

from .cli import main

sys.exit(main())
