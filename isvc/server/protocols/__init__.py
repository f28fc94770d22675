"""One folder per wire protocol: schema (pydantic only), adapter (wire <-> engine), routes."""
