"""durabert's shared contract: models, names, errors, settings, logging and Temporal plumbing.

Every role imports its cross-process vocabulary from the submodules here (for example
``durabert.shared.models``); nothing here imports an ML library. This file re-exports nothing,
so importing one submodule does not load the others (the worker runner, the client).
"""

__all__: list[str] = []
