"""IIA and S4S under their former module name (public API); the code lives in :mod:`dode.learn`."""
from dode.learn.learned import *  # noqa: F401,F403
from dode.learn.learned import __all__  # noqa: F401
