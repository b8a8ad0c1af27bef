"""`tracenas run`: the stages chained in one run directory (`runner`) and its `report.md` (`report`)."""
