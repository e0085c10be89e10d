"""`python -m lora_lab <command> ...`: the `lora-lab` command, also under torchrun:

    torchrun --nproc_per_node 2 -m lora_lab train method=full train.max_steps=20
"""

import sys

from lora_lab.cli import main

if __name__ == "__main__":
    sys.exit(main())
