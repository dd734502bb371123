"""The engine floor: what runs a model of any family. The objective (:mod:`.objective`), the one
training loop (:mod:`.loop`) and sequence training (:mod:`.sequence`), inference and anomaly scores
(:mod:`.inference`, :mod:`.anomaly`), the temporal filter (:mod:`.filter`), export (:mod:`.export`),
bundles (:mod:`.bundle`) and atomic file writes (:mod:`.atomic`), synthetic data for tests and demos.

It asks the family (``model.family``), never branches on a family's name.
"""
