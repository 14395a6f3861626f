"""Inkpunk Studio: the PySide6 desktop app around the from-scratch engine in `engine`."""

import time

# When this process started running our code (the app logs how long its window took to appear).
STARTED = time.perf_counter()
