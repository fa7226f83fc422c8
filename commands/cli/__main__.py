"""`python -m commands.cli`: what the services' pods and the tests run."""

import sys

from commands.cli import main

sys.exit(main())
