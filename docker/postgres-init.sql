-- Run once by the official postgres image on an empty data volume (docker-entrypoint-initdb.d):
-- one database per server, and pg_trgm, which Prefect's migrations need.
CREATE DATABASE prefect;
CREATE DATABASE mlflow;
\connect prefect
CREATE EXTENSION IF NOT EXISTS pg_trgm;
