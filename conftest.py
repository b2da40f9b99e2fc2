"""The shared fixtures of tests/ and ui-tests/ live in tests/helpers/fixtures.py.

Loading them once, as a plugin at the root, gives both folders the same
session-scoped hub (one JupyterHub per test session, not one per folder).
"""

pytest_plugins = ["tests.helpers.fixtures"]
