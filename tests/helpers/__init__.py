"""What the tests share: the real hub and its fixtures (``fixtures``), HTTP
helpers and contracts (``utils``), build helpers (``buildutils``), a git
server (``gitserver``), the BinderHub stand-in (``binderhub_standin``), the
kill-and-restart tools (``logkills``, ``restarter``) and the Kubernetes
cluster (``kubecluster``). Test modules import from here, never from each other.
"""
