"""Programs that compose roles (DESIGN.md §3): they may import every library package, and no
library package imports them.

* ``up``: the embedded all-in-one (``streamrec up``): its roles as processes under a supervisor
  (``supervisor``, children in ``up_children``), or with ``--one-process`` the consumer groups
  beside the API in one process (``embedded_app`` builds that for tests and benchmarks);
* ``simulate``: simulated users served through Kafka, the consumer groups and the registry
  (``streamrec simulate``; the command in ``simulate_cli`` loads PyTorch only when it runs).

Still in the library, to move here (issue 12): the training-jobs service (``api.training_jobs``).
"""
