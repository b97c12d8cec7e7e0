"""A synthesis run: the work units (units), what changes the images and every shard records (identity), the output
folder and its resume rules (output_dir), the loop over units on one or many processes (engine) and the summary it
reports (summary)."""
