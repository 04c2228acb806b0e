"""When this process started resbudget (the first import of the package): ``train --minutes`` counts from here, so
the time to import PyTorch and to load the data is inside the limit."""

import time

STARTED = time.perf_counter()
