"""Command-line interface: wires the pipeline stages together; no registration logic lives here.

Importing this package (every fide command and the container entry point do, before torch is loaded) asks torch's
OpenMP runtime to let idle threads sleep instead of spinning, unless the user chose otherwise. It is read once,
when the runtime loads, so it must be set here. Measured on 2 cores with two other processes busy: 87 s and 74 s
for two 128 px pairs with 2 spinning threads, 5.7 s and 5.5 s with ``OMP_WAIT_POLICY=PASSIVE`` (docs/operations.md,
CPU use).
"""

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
