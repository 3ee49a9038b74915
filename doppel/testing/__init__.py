"""Test support shipped with doppel: a scripted, fault-injecting OpenAI-compatible LLM server.

Used by doppel's own tests and benchmarks, and by anyone who wants to run a flow without a model:
`python -m doppel.testing.llm_server --port 0 --latency 0.5`.
"""
