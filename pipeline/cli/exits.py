"""`vidpipe`'s exit codes, shared by every command."""

EXIT_USER_ERROR = 2
EXIT_LEDGER = 1
EXIT_INTERRUPTED = 130
EXIT_WORKER_BUDGET = 3
EXIT_FAILED_FRAMES = 4
# Failures a run that did its job may have: frames shed by a source whose policy is shed, and
# (after a signal) frames in flight when it came.
EXCUSED_FAILURES = {"shed"}
