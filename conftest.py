"""Root conftest: registers vtest's pytest plugin (tests/vtc/*.vtc as test items).

Registered here, and only here (no pytest11 entry point), so it loads once whether or not the
package is installed.
"""

pytest_plugins = ["vtest.pytest_plugin"]
