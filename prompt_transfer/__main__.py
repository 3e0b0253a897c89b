import sys

from prompt_transfer.cli import main

sys.exit(main())
