"""What the tests share: the real hub and its fixtures (``fixtures``), HTTP
helpers and contracts (``utils``), build helpers (``buildutils``), a git
server (``gitserver``), the BinderHub stand-in (``binderhub_standin``), the
kill-and-restart tools (``logkills``, ``restarter``) and the Kubernetes
cluster (``kubecluster``); and, for some tests each:

- ``servers``: waiting for a server (``wait_server``), its container
  (``container``) and the user's files in it (``Files``);
- ``environments``: images labelled like a build's (``build_environment``) and
  what 3.x left on its images and servers (``UPSTREAM``);
- ``dockerbuilder``: making a ``DockerBuilder`` and its requests, and reading its
  events, against the real engine;
- ``databases``: throw-away databases on the shared PostgreSQL and MySQL servers
  (``_server_db``); ``private_postgres``: a PostgreSQL server of a test's own
  that it stops and starts (``PrivatePostgres``);
- ``docker_socket``: a socket that forwards to the Docker engine once started
  (``SocketForwarder``); ``processes``: the service's pids (``service_pids``);
- ``fakes``: an in-memory Docker engine for the spawners (``FakeDocker``,
  ``spawner_maker``, ``env_labels``) and a database that can be switched off
  (``FlakySessions``), for unit tests;
- ``kubehub``: a JupyterHub with ``Repo2DockerKubeSpawner`` on the real cluster
  (``Cluster``, ``cleanup_images``).
- ``binderhub_real``: the real BinderHub as the hub's service ``binder`` (``binderhub_hub``, ``serve_git``).
- ``archives``: generated hostile archives and the answer each must get
  (``generate``, ``Archive.verdict``), for the hostile-input tests.

Test modules import from here, never from each other
(``tests/test_test_layout.py`` checks it).
"""
