"""`python -m train ...` == `jaxnets-train ...`."""

import sys

from train.cli import main

sys.exit(main())
