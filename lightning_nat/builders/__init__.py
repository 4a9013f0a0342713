"""``lightning_nat.builders``: the name the design card and older code use for the builders in ``data/``."""

from lightning_nat.data.builders import *  # noqa: F401,F403
from lightning_nat.data.builders import __all__  # noqa: F401
