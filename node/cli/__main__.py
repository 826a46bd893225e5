"""`python -m node.cli`: the `gradmesh` command."""

import sys

from node.cli.main import main

sys.exit(main())
