"""The zsds camera simulator.

It writes, for a sky region and N nights, a reference catalogue, a survey schedule, a
known-asteroid orbit file and raw camera files that follow ``shared/spec``, with exact truth
tables. Entry point: :func:`zsds.sim.survey.simulate` (``zsds simulate`` on the command line).
"""
