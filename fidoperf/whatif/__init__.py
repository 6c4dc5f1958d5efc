"""What-if and serving: vectorised sweeps (:mod:`.sweep`) and capacity plans (:mod:`.plan`)."""
