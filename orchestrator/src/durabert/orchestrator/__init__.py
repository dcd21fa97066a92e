"""durabert orchestrator."""
