"""Calibrated hybrid simulator (issue 10, fidelity): features -> rating distribution -> decoding.

- features.py: the calibration slice (held out of each user's train ratings) and the feature
  table per (user, item): CF predictions, biases, counts, rating histograms, genre affinity, and
  the LLM's rating when a run provides one.
- calibrate.py: a multinomial model over 1..5 fit on the slice -> P(rating | features).
- decode.py: accuracy decoding (expected value), realism decoding (quantile matching to a target
  histogram, per group) and the one-parameter family between them.
- hybrid.py: the whole thing for one fold (fit on train only, predict the requested pairs).
"""
