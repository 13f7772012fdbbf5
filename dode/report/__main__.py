"""``python -m dode.report`` is ``dode-report``."""
import sys

from dode.report.cli import main

sys.exit(main())
