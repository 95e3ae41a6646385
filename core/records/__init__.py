"""What one stored sample is: shard format, targets, replay records and their checks."""
