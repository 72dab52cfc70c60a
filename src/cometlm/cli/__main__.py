"""`python -m cometlm.cli` (what torchrun runs): the same command line as `cometlm`."""

import sys

from cometlm.cli import main

sys.exit(main())
