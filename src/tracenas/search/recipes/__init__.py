"""Search recipes: the torch side of a search (load, calibrate, score candidates, resume, write the run
directory) for each strategy; `runner.run_search` is the entry point."""
