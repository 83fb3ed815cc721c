"""The stream consumer: read a batch, fold it with the rules, commit it with its applied id."""
