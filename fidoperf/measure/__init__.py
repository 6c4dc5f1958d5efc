"""Measurement: the FiD layers in JAX (:mod:`.layers`), an honest timing harness
(:mod:`.timing`), device calibration (:mod:`.calibrate`), layer benchmarks
(:mod:`.bench`) and predicted-against-measured statistics (:mod:`.validate`).
Everything that imports jax is imported only where it is used."""
