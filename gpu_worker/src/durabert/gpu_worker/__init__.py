"""durabert gpu worker."""
