"""``python -m vit_train``: one fine-tuning run (alone, under torchrun, or under srun)."""

import sys

from vit_train.cli import main
from vit_train.distributed.shutdown import clean_exit

if __name__ == "__main__":
    code = main(sys.argv[1:])
    # --help/--print-config/config errors never started a process group; a normal exit is fine there.
    clean_exit(code)
