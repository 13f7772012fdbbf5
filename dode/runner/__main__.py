"""``python -m dode.runner`` is ``dode-run``."""
from dode.runner.cli import main

main()
