"""``python -m worker [run|status] --config config.toml``: see ``services.worker_process`` (the process is
composed from the bot's configuration, one layer up, like ``bot.py``)."""

import sys

from services.worker_process import main

sys.exit(main())
