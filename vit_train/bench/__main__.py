"""``python -m vit_train.bench``: see :mod:`vit_train.bench.runner`; ``python -m vit_train.bench grid``:
the grid benchmark, see :mod:`vit_train.bench.grid`."""

import sys

if __name__ == "__main__":
    if sys.argv[1:2] == ["grid"]:
        from vit_train.bench.grid import main as grid_main

        sys.exit(grid_main(sys.argv[2:]))
    from vit_train.bench.runner import main

    sys.exit(main())
