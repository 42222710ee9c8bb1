import sys

from spul.cli import main

sys.exit(main())
