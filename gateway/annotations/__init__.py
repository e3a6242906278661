"""The annotation routes: gold and human labels in (feedback), stored annotations, the review queue, refits and
their published parameters out."""
