"""Presentation: formatting (:mod:`.fmt`), prediction and validation tables
(:mod:`.report`), plots (:mod:`.plots`) and capacity-plan reports (:mod:`.plan_report`)."""
