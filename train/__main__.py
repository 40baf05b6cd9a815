"""`python -m train ...` == `jaxnets-train ...` == `python -m jaxnets.cli.train ...`."""

import sys

from jaxnets.cli.train import main

sys.exit(main())
