"""``python -m delta_opt.cli``: the same as the ``delta-opt`` console script."""

import sys

from .main import main

sys.exit(main())
