"""doppel's SQL: tables (schema.sql and friends), named queries (queries/) and views (views/), as package data."""
