"""Offline training helpers for ranker bundles (data loading and splitting).

Nothing here is imported by the server: it runs only in the training
environment (see tools/build_interim_bundle.py), so it may stay plain Python
without pulling torch or transformers into the serving install.
"""
