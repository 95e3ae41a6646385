"""The config sections below the samplers (training, images, teachers, targets, generators)."""
