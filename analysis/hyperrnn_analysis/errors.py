"""The one exception the toolkit raises for bad input: the command line prints its message as one
line and exits 2."""


class AnalysisError(Exception):
    pass
