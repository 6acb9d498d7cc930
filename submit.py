"""Send a ViT fine-tuning grid to Slurm, follow it, resume or cancel it, report it (see hpc/cli.py).

    python submit.py submit grids/cpu_tiny.yaml --dry-run
    python submit.py status grids/cpu_tiny.yaml --watch 10
"""

import sys

from hpc.cli import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
