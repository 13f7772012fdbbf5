"""``python -m dode.report`` is ``dode-report``."""
import sys

from dode.report.report import main

sys.exit(main())
