"""MLflow's tracking protocol, spoken by the gateway (docs/mlflow.md)."""
