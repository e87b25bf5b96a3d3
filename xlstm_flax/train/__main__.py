"""``python -m xlstm_flax.train --config FILE [key=value ...]`` (same as ``xlstm-flax train``)."""
import sys

from ..cli import main

sys.exit(main(["train", *sys.argv[1:]]))
