"""The recommender arena (issue 23): do simulated users rank recommenders the way real users do?

- zoo.py: the recommender protocol (fit a train DataFrame; score (user, item) pairs), the built-in
  entrants (Cornac, implicit, doppel's SASRec) and `module:factory` plug-ins.
- lists.py: what each fitted recommender produces: scores of every test user's held-out items
  (observed-items protocol) and its top-k from the unrated catalogue (catalogue protocol).
- judges.py: gains from real held-out ratings and from the calibrated hybrid (accuracy, realism,
  one draw; and the circularity-audit variants without a recommender family's features).
- protocols.py: nDCG@10 / precision@5 per user, rank correlations with bootstrap intervals, the
  noise ceiling, and P(like) calibration (like-rate gap, ECE, Brier, reliability bins).
"""
