"""doppel's data contracts: one Great Expectations suite (JSON) per table, as package data."""
