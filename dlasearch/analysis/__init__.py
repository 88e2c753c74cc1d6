"""Analysis on top of studies and runs: pattern comparisons (``compare``), study reports (``report``)
and architecture diagrams (``render``, ``layout``); a dense trial's masks beside the truth (``predictions``)."""
