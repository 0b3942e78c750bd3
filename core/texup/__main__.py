"""``python -m texup ...`` runs the CLI."""

import sys

from texup.cli.main import main

sys.exit(main())
