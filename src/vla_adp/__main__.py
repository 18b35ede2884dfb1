import sys

from vla_adp.cli import main

sys.exit(main())
