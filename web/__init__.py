"""The FastAPI gateway: the REST API, the ``/ws`` live feed and the static page it serves."""
