"""One job end to end: the task its config names, trained, evaluated and recorded in its run directory."""
