"""``python -m toyworld train OUT [--quick] [--resume] [--seed N]``: train the toy-world model."""

import sys

from toyworld.train import main

if __name__ == "__main__":
    if len(sys.argv) < 2 or sys.argv[1] != "train":
        sys.exit("usage: python -m toyworld train OUT [--quick] [--resume] [--seed N]")
    main(sys.argv[2:])
