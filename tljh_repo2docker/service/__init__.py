"""The service's domain, free of the web framework.

What an environment may be asked for (``fields``), the one path that queues
its builds (``lifecycle``), builders' quotas (``quotas``), disk use and
prune (``disk_usage``), the users' homes and servers' containers on the
engine (``engine``), versions and rollback (``version_history``), the ref
poller (``ref_watcher``), push webhooks' secrets and signatures
(``push_webhooks``), the encoded environment list (``environment_list``) and
whether a server can start from an environment now (``starting``).
They raise the errors of :mod:`tljh_repo2docker.errors`; the handlers turn
those into HTTP in one place. See docs/architecture.md.
"""
