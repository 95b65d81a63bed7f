"""Programs that compose roles (DESIGN.md §3): they may import every library package, and no
library package imports them.

* ``simulate``: simulated users served through Kafka, the consumer groups and the registry
  (``streamrec simulate``; the command in ``simulate_cli`` loads PyTorch only when it runs).

Still in the library, to move here (issue 12): the embedded all-in-one that runs the consumer
groups beside the API (``api.app`` with ``run_consumers``), the training-jobs service.
"""
