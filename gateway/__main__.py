"""``python -m gateway`` is the same as the ``mcp-gateway`` command."""

from gateway.cli import main

raise SystemExit(main())
