"""`python -m layerdsl`."""

import sys

from layerdsl.driver.cli import main

sys.exit(main())
