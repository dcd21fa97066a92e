"""durabert data worker."""
