import sys

from vla_adp.cli import main

if __name__ == "__main__":  # simulator processes of `eval --envs N` (spawn) import this module too
    sys.exit(main())
