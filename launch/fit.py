#!/usr/bin/env python
"""``nat fit`` as a script, for launchers that take a script path rather than a command.

Lightning's own launcher (``fabric run`` in Lightning 2.x, ``lightning run model`` before) starts one
process per device with the distributed environment set; the Trainer inside ``nat fit`` joins it:

    fabric run --accelerator cuda --devices 4 launch/fit.py --config launch/configs/strategyqa-7b-1000-500-nat.yaml

Any ``nat fit`` argument follows the script (``--config``, ``--trainer.*``, ``--ckpt_path last``, ...).
"""

import sys

from lightning_nat.train.fit import cli_main

if __name__ == "__main__":
    sys.exit(cli_main(sys.argv[1:]))
