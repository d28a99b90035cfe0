"""`python -m shardserve_operator`: same as `shardserve operator`."""

import sys

from shardserve_operator.main import main

sys.exit(main())
