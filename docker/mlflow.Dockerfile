# The official MLflow server image plus the PostgreSQL driver it lacks (psycopg2, for the
# postgresql+psycopg2:// backend store): a two-line derived image rather than the 2 GB pipeline
# image, so the tracking server stays the upstream build of the same MLflow version the
# pipeline pins (constraints.txt). Built by docker/compose.yaml.
FROM ghcr.io/mlflow/mlflow:v3.17.2
RUN pip install --no-cache-dir psycopg2-binary==2.9.13
