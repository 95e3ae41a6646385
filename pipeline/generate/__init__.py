"""Making sets: the plan, the Ray driver and its supervisor, set locations and gc, teacher import."""
