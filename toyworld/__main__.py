"""``python -m toyworld train OUT [...]`` trains the toy-world model; ``python -m toyworld grid OUT.png``
draws the README's grid of what it makes."""

import sys

from toyworld import grid, train

COMMANDS = {"train": train.main, "grid": grid.main}

if __name__ == "__main__":
    if len(sys.argv) < 2 or sys.argv[1] not in COMMANDS:
        sys.exit("usage: python -m toyworld train OUT [--quick] [--resume] [--seed N] | grid OUT.png [--model DIR]")
    COMMANDS[sys.argv[1]](sys.argv[2:])
