"""`python -m prompt_transfer <command> ...`: the console script (see cli/)."""

import sys

from prompt_transfer.cli import main

sys.exit(main())
