"""Exit codes of ``fed-coordinator`` and ``fed-client`` (and what ``fedcore run`` reads from them)."""

from __future__ import annotations

EXIT_OK = 0  #: the run completed
EXIT_FAILED = 1  #: the run failed, or a process died
EXIT_USAGE = 2  #: bad arguments or configuration file
EXIT_ADDRESS_IN_USE = 3  #: the address to listen on is taken
EXIT_INTERRUPTED = 130  #: stopped by Ctrl-C or SIGTERM
