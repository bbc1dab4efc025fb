"""Runs as jobs: into an output file that resumes after any interruption (:mod:`.output`),
checked by a manifest (:mod:`.manifest`) and recovered record by record (:mod:`.recovery`)."""
