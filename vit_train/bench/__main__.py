"""``python -m vit_train.bench``: see :mod:`vit_train.bench.runner`."""

import sys

from vit_train.bench.runner import main

if __name__ == "__main__":
    sys.exit(main())
