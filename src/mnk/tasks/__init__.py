"""Stage 2, tasks: the preprocessed images in, index arrays of tasks out.

Takes the data stage's arrays and one experiment's `TaskSpec` (`spec`, plain Python); gives
the paired, nested design (`sampling`): the training, validation and test tasks every method
sees, and each (way, shot, seed)'s image pool. `tasklist` reads fixed test tasks from a CSV.
"""
