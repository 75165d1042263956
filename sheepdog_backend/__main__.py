import sys

from sheepdog_backend.cli import main

sys.exit(main())
