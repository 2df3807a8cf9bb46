"""Ranker training, export and evaluation (`ltr-sidecar train`, `evaluate`, `collect`).

Nothing here is imported by the server.  Data loading (sharegpt, traces,
dataset) is plain Python; losses, model, train and export need the ``train``
extra (torch, transformers); baselines need scikit-learn (also in ``train``).
"""
