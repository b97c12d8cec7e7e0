"""Real data sources: labelled image folders."""
