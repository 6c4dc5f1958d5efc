"""The cost and time model: closed-form FLOPs and bytes per operator (:mod:`.ops`), and
times, totals and memory per operator, layer and chip (:mod:`.prediction`), and the time of
collectives across chips (:mod:`.collectives`)."""
