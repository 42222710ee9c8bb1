"""Offline side of spul-serve: reference world, base model, SPUL training, baselines, evaluation."""
