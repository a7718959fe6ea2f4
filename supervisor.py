"""``python supervisor.py`` is ``coby run``: the engine against the exchanges in config.yaml."""

import sys

from engine.cli import main

if __name__ == "__main__":
    sys.exit(main(["run", *sys.argv[1:]]))
