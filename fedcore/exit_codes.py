"""Exit codes of fedcore's services (`fed-coordinator`, `fed-client`): what they return and what the launcher reads back."""

from __future__ import annotations

EXIT_OK = 0  #: the run completed
EXIT_FAILED = 1  #: the run failed, or a process died
EXIT_USAGE = 2  #: bad arguments or configuration file
EXIT_ADDRESS_IN_USE = 3  #: the address to listen on is taken
EXIT_INTERRUPTED = 130  #: stopped by Ctrl-C or SIGTERM
