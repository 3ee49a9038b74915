"""The ensemble simulator (seed: the LLM-powered user simulator, AAAI'25), built on doppel's store and gateway.

- keywords.py: LLM item analysis (pros/cons keywords, objective and from reviews) through the gateway.
- vocabulary.py: unify synonymous keywords into a shared vocabulary (embedding clustering).
- embeddings.py: item text embeddings (sentence-transformers, offline), computed once and stored.
- sasrec.py: the statistical voter, a seeded SASRec with a like head, checkpointed.
- voters.py: f_mat, f_sim, f_sta and the 2-of-3 vote, vectorised; the abstention rules are there.
- evaluate.py: AUC/accuracy per voter, for the vote and the spine's LLM ratings.
- store.py, reviews.py, config.py: reads/writes, review texts, settings.
"""
