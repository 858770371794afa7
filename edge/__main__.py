"""`python -m edge`: the `edge` command. The one import in the edge package from a layer above it
(edge_cli, the command-line leaf): nothing in edge imports this module."""
import sys

from edge_cli import main

sys.exit(main())
