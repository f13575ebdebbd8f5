"""``python -m sqlalchemy_smartpool.bench SCENARIO``."""

import sys

from . import main

sys.exit(main())
