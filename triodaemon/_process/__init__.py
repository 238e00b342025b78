"""The process layer: what one triodaemon process is for (its role), and how it runs.

- :mod:`.roles`: the roles (a daemon alone, a supervisor of workers, a worker;
  any of them as a successor) behind one interface;
- :mod:`.takeover`: a successor's part;
- :mod:`.startup`: where a start's sockets come from, and the instant it is ready;
- :mod:`.run`: a role as the process: signals, exit codes;
- :mod:`.logs` and :mod:`.tuning`: stderr and journald; the open-file limit, malloc.

The command line (:mod:`triodaemon._cli`) parses flags, builds a role, and runs it.
"""
