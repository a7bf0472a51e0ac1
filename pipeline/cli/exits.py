"""`vidpipe`'s exit codes, shared by every command."""

EXIT_USER_ERROR = 2
EXIT_LEDGER = 1
EXIT_INTERRUPTED = 130
EXIT_WORKER_BUDGET = 3
EXIT_FAILED_FRAMES = 4  # frames failed for a reason other than shed (or shutdown after a signal)
