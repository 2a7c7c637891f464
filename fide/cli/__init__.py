"""Command-line interface: wires the pipeline stages together; no registration logic lives here.

Importing this package (every fide command and the container entry point do, before torch is loaded) bounds how
long torch's idle OpenMP threads spin before they sleep (``GOMP_SPINCOUNT=1000``), unless the user chose a wait
policy. libgomp reads it once, when it loads, so it must be set here. Measured on 2 cores (2026-12-01, three
834 px whole cores, docs/operations.md, CPU use): alone ~8.5 s per pair, against ~12 s with ``PASSIVE`` (sleep at
once) and ~8.9 s with libgomp's default; two processes side by side ~15 s per pair, against ~13 s with ``PASSIVE``
and ~130 s with the default, which spins 300 times longer.
"""

import os

if "OMP_WAIT_POLICY" not in os.environ and "GOMP_SPINCOUNT" not in os.environ:
    os.environ["GOMP_SPINCOUNT"] = "1000"
