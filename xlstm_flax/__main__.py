"""``python -m xlstm_flax train|generate ...``: the same command line as ``xlstm-flax``."""

import sys

from .cli import main

sys.exit(main())
