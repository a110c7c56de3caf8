-- A second database for MLflow's users and permissions (the first, POSTGRES_DB, holds runs).
CREATE DATABASE mlflow_auth;
