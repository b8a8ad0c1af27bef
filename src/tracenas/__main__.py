"""`python -m tracenas ...` is the same as the `tracenas` command."""

import sys

from tracenas.cli import main

sys.exit(main())
