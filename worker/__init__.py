"""The stream consumer: read a batch, fold it with the rules, commit it with its applied id."""

import monitor  # noqa: F401  (first: it chooses the compiled pure core or its source)
