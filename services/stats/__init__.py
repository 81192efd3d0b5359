"""Statistics shared by the live comparison service and the `compare` report: quantile
sketches, distribution distances, paired measures, and the one rule of what "deadline met"
means. Neutral ground: it imports no service, and both sides import it."""
