"""python -m hfgpt STEP ...: the same as the `hfgpt` command."""

import sys

from hfgpt.cli import main

sys.exit(main())
