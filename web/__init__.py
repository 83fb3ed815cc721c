"""The FastAPI gateway (REST and /ws) and the static page (built in a later issue)."""
