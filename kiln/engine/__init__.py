"""The scheduling engine: what happens to a job after SubmitJob until its last attempt ends.

It owns job states (`lifecycle`: the transition table, the only writer of a job's status and stop
flags, and what a dependency, an array child, an attempt's exit or a gang's main node means for
a job), the scheduler's loop and leader lease (`scheduler`), placement order and fair share
(`scheduling`, `fair_share`, `share_queue`), retry strategies (`retry`), job-state time limits
(`time_limits`) and starting the next attempt before a slot frees (`start_ahead`). It talks to
the store and to an executor; it never imports the API operations (`kiln.batch`, `kiln.logs`)
that sit above it.
"""
