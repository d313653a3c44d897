import sys

from liteclaw.cli import main

sys.exit(main())
